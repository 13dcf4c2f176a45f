-- A change of a user's limit (queue_set_user_limit, or the default of
-- queue_config.user_max_concurrency) places the user's jobs again: the user's
-- row FOR UPDATE (it waits for the claims and ends of the user's jobs under
-- way, and they for it), the limit in force and the processing jobs it counts
-- written, the ready jobs out of the claim's index, then the best that fit the
-- limit back in, announced. So a limit lowered while jobs run lets no new job
-- start until fewer than the new limit run. Waits for no session (the lock
-- order: queue_finish.sql). Returns the jobs announced.
CREATE OR REPLACE FUNCTION public.queue_user_replace(user_key_param uuid)
RETURNS integer
LANGUAGE plpgsql VOLATILE SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    lim integer := public.queue_user_limit_of(user_key_param);
BEGIN
    INSERT INTO public.queue_users (user_key, max_concurrency, running)
    VALUES (user_key_param, NULL, NULL)
    ON CONFLICT (user_key) DO NOTHING;
    PERFORM 1 FROM public.queue_users u WHERE u.user_key = user_key_param FOR UPDATE;
    UPDATE public.queue_users u
    SET max_concurrency = lim,
        running = CASE WHEN lim IS NOT NULL THEN
                      (SELECT count(*) FROM public.coding_jobs c
                       WHERE c.user_key = user_key_param AND c.status = 'processing') END
    WHERE u.user_key = user_key_param;
    UPDATE public.coding_jobs j SET waiting_for = 'user'
    WHERE j.user_key = user_key_param AND j.status = 'pending' AND j.waiting_for IS NULL
      AND lim IS NOT NULL;
    RETURN public.queue_user_settle(user_key_param, public.queue_now());
END
$$;
