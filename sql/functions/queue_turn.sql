-- Whose turn it is at this priority: the first ready job by priority and seq
-- belongs to first_user; a user before it in turn order (the oldest most
-- recent start; no start yet first) that has a ready job at the priority goes
-- first. Only users named ready are read (queue_users_turn_idx), one probe
-- each; one named ready with nothing ready is cleared (SKIP LOCKED). Users in
-- `passed` are left out. (The order rule: queue_placement.sql.)
CREATE OR REPLACE FUNCTION public.queue_turn(first_user uuid, priority_param integer,
                                             now_param timestamptz, passed uuid[])
RETURNS uuid
LANGUAGE plpgsql VOLATILE SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    bound bigint;
    named boolean;
    v uuid;
BEGIN
    SELECT u.turn, u.ready INTO bound, named FROM public.queue_users u
    WHERE u.user_key = first_user;
    FOR v IN SELECT u.user_key FROM public.queue_users u
             WHERE u.ready AND u.turn < bound ORDER BY u.turn LOOP
        CONTINUE WHEN v = ANY (passed);
        IF EXISTS (SELECT 1 FROM public.coding_jobs c
                   WHERE c.user_key = v AND c.status = 'pending' AND c.waiting_for IS NULL
                     AND c.priority = priority_param AND c.run_at <= now_param) THEN
            RETURN v;
        END IF;
        UPDATE public.queue_users u SET ready = false
        WHERE u.user_key = v AND u.ready
          AND u.user_key IN (SELECT x.user_key FROM public.queue_users x
                             WHERE x.user_key = v FOR NO KEY UPDATE SKIP LOCKED)
          AND NOT EXISTS (SELECT 1 FROM public.coding_jobs c
                          WHERE c.user_key = v AND c.status = 'pending'
                            AND c.waiting_for IS NULL);
    END LOOP;
    IF NOT named THEN
        -- Left out of the walk by a race of two transactions: back in it.
        UPDATE public.queue_users u SET ready = true
        WHERE u.user_key = first_user AND NOT u.ready
          AND u.user_key IN (SELECT x.user_key FROM public.queue_users x
                             WHERE x.user_key = first_user FOR NO KEY UPDATE SKIP LOCKED);
    END IF;
    RETURN first_user;
END
$$;
