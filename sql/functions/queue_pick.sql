-- The claim's choice (claim_next_job.sql says how): the job that may start
-- next, locked, and its user's row, locked as its limit wants. user_ok is false
-- when the claim must pass over the user (its row busy, its limit reached: its
-- ready jobs then leave the claim's index); job is NULL when no job may start.
-- turn_ours: the user's row is locked to write the turn. Users in `passed` are
-- left out. (The order rule: queue_placement.sql.)
CREATE OR REPLACE FUNCTION public.queue_pick(now_param timestamptz, passed uuid[],
                                             OUT job uuid, OUT user_key uuid,
                                             OUT user_ok boolean, OUT turn_ours boolean)
LANGUAGE plpgsql VOLATILE SET search_path = pg_catalog, pg_temp AS $$
#variable_conflict use_column
DECLARE
    first record;
    lim record;
BEGIN
    user_ok := false;
    SELECT c.id, c.user_key, c.priority INTO first FROM public.coding_jobs c
    WHERE c.status = 'pending' AND c.waiting_for IS NULL AND c.run_at <= now_param
      AND c.user_key <> ALL (passed)
    ORDER BY c.priority DESC, c.seq
    LIMIT 1;
    IF NOT FOUND THEN
        RETURN;
    END IF;
    job := first.id;
    user_key := public.queue_turn(first.user_key, first.priority, now_param, passed);
    SELECT c.id INTO job FROM public.coding_jobs c
    WHERE c.user_key = queue_pick.user_key AND c.status = 'pending' AND c.waiting_for IS NULL
      AND c.priority = first.priority AND c.run_at <= now_param
    ORDER BY c.seq
    LIMIT 1
    FOR UPDATE SKIP LOCKED;
    IF NOT FOUND THEN
        -- Taken by other claims meanwhile: the first job that none holds, by
        -- priority and seq (claims at the same instant have no order).
        SELECT c.id, c.user_key INTO job, user_key FROM public.coding_jobs c
        WHERE c.status = 'pending' AND c.waiting_for IS NULL AND c.run_at <= now_param
          AND c.user_key <> ALL (passed)
        ORDER BY c.priority DESC, c.seq
        LIMIT 1
        FOR UPDATE SKIP LOCKED;
        IF NOT FOUND THEN
            job := NULL;
            RETURN;
        END IF;
    END IF;
    SELECT u.max_concurrency, u.running INTO lim FROM public.queue_users u
    WHERE u.user_key = queue_pick.user_key FOR NO KEY UPDATE SKIP LOCKED;
    turn_ours := FOUND;
    IF NOT turn_ours THEN
        -- Busy: another claim writes its turn, or an end holds it. Without a
        -- limit the claim goes on, share-locked against a change of the limit.
        SELECT u.max_concurrency, u.running INTO lim FROM public.queue_users u
        WHERE u.user_key = queue_pick.user_key FOR KEY SHARE SKIP LOCKED;
        IF NOT FOUND OR lim.max_concurrency IS NOT NULL THEN
            RETURN;
        END IF;
    END IF;
    IF lim.running >= lim.max_concurrency THEN
        -- At its limit (a retry came due, or a job was placed as another
        -- started): none of its jobs stays in the claim's index.
        PERFORM public.queue_user_settle(queue_pick.user_key, now_param);
        RETURN;
    END IF;
    user_ok := true;
END
$$;
