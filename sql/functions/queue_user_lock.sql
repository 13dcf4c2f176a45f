-- The user's row, made when the user is new, and locked for a change of the
-- user's jobs: FOR KEY SHARE (so that an operator's change of the limit waits
-- for it, and it for the change), FOR NO KEY UPDATE when the user has a limit
-- (the running count and the user's waiting jobs change under it). The nil uuid
-- (no user) is never locked: it has no limit, and every backend job shares it.
-- The lock order: the session first, then the user, then jobs (queue_finish.sql).
-- Returns the limit in force and the processing jobs it counts (NULL: none).
CREATE OR REPLACE FUNCTION public.queue_user_lock(user_key_param uuid,
                                                  OUT max_concurrency integer,
                                                  OUT running integer)
LANGUAGE plpgsql VOLATILE SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    IF user_key_param = '00000000-0000-0000-0000-000000000000'::uuid THEN
        RETURN;
    END IF;
    SELECT u.max_concurrency, u.running INTO max_concurrency, running
    FROM public.queue_users u WHERE u.user_key = user_key_param FOR KEY SHARE;
    IF NOT FOUND THEN
        max_concurrency := public.queue_user_limit_of(user_key_param);
        INSERT INTO public.queue_users AS u (user_key, max_concurrency, running)
        VALUES (user_key_param, max_concurrency,
                CASE WHEN max_concurrency IS NOT NULL THEN 0 END)
        ON CONFLICT (user_key) DO NOTHING;
        SELECT u.max_concurrency, u.running INTO max_concurrency, running
        FROM public.queue_users u WHERE u.user_key = user_key_param FOR KEY SHARE;
    END IF;
    IF max_concurrency IS NOT NULL THEN
        SELECT u.max_concurrency, u.running INTO max_concurrency, running
        FROM public.queue_users u WHERE u.user_key = user_key_param FOR NO KEY UPDATE;
    END IF;
END
$$;
