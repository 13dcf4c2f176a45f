-- An operator's limit for a user (a plan's tier): at most max_concurrency_param
-- of the user's jobs processing at once, 1 to 1000; NULL clears the user's own
-- limit (queue_config.user_max_concurrency applies again). The user is one that
-- owns a session. The user's jobs are placed again at once (queue_user_replace).
-- Returns the limit in force now (NULL: none).
CREATE OR REPLACE FUNCTION public.queue_set_user_limit(user_id_param uuid,
                                                       max_concurrency_param integer)
RETURNS integer
LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    IF max_concurrency_param NOT BETWEEN 1 AND 1000 THEN
        RAISE EXCEPTION 'a user''s limit is 1 to 1000 jobs at once, got %', max_concurrency_param
            USING ERRCODE = 'check_violation', TABLE = 'queue_user_limits',
                  CONSTRAINT = 'queue_user_limits_max_concurrency_check';
    END IF;
    IF user_id_param IS NULL
       OR NOT EXISTS (SELECT 1 FROM public.coding_sessions s WHERE s.user_id = user_id_param) THEN
        RAISE EXCEPTION 'no session belongs to user %', coalesce(user_id_param::text, 'NULL')
            USING ERRCODE = 'no_data_found',
                  HINT = 'a user is known by the sessions it owns (coding_sessions.user_id)';
    END IF;
    IF max_concurrency_param IS NULL THEN
        DELETE FROM public.queue_user_limits l WHERE l.user_id = user_id_param;
    ELSE
        INSERT INTO public.queue_user_limits AS l (user_id, max_concurrency, updated_at)
        VALUES (user_id_param, max_concurrency_param, public.queue_now())
        ON CONFLICT (user_id) DO UPDATE
        SET max_concurrency = excluded.max_concurrency, updated_at = excluded.updated_at;
    END IF;
    PERFORM public.queue_user_replace(user_id_param);
    RETURN public.queue_user_limit_of(user_id_param);
END
$$;
