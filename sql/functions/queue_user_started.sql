-- After the claim started a job of the user: the user's turn moves to the back
-- (when the claim holds the user's row: turn_ours), its running count grows
-- when it has a limit; at the limit its other ready jobs leave the claim's
-- index, and a user with nothing ready leaves the claim's walk. (The order
-- rule: queue_placement.sql.)
CREATE OR REPLACE FUNCTION public.queue_user_started(user_key_param uuid, turn_ours boolean,
                                                     now_param timestamptz)
RETURNS void
LANGUAGE plpgsql VOLATILE SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    lim record;
BEGIN
    IF NOT turn_ours THEN
        RETURN;
    END IF;
    UPDATE public.queue_users u
    SET turn = nextval('public.queue_turn_seq'::regclass), last_started_at = now_param,
        running = u.running + 1
    WHERE u.user_key = user_key_param
    RETURNING u.max_concurrency, u.running INTO lim;
    IF lim.running >= lim.max_concurrency THEN
        PERFORM public.queue_user_settle(user_key_param, now_param);
    ELSIF NOT EXISTS (SELECT 1 FROM public.coding_jobs c
                      WHERE c.user_key = user_key_param AND c.status = 'pending'
                        AND c.waiting_for IS NULL) THEN
        UPDATE public.queue_users u SET ready = false
        WHERE u.user_key = user_key_param AND u.ready;
    END IF;
END
$$;
