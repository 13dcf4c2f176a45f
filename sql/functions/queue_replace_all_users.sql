-- A change of queue_config.user_max_concurrency places again the jobs of every
-- user without a limit of its own (queue_user_replace), one user after the
-- other in key order. Sessions with no user are never limited.
CREATE OR REPLACE FUNCTION public.queue_replace_all_users() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    v uuid;
BEGIN
    FOR v IN SELECT u.user_key FROM public.queue_users u
             WHERE u.user_key <> '00000000-0000-0000-0000-000000000000'::uuid
               AND NOT EXISTS (SELECT 1 FROM public.queue_user_limits l
                               WHERE l.user_id = u.user_key)
             ORDER BY u.user_key LOOP
        PERFORM public.queue_user_replace(v);
    END LOOP;
    RETURN NULL;
END
$$;

CREATE OR REPLACE TRIGGER on_user_max_concurrency_changed
    AFTER UPDATE OF user_max_concurrency ON public.queue_config
    FOR EACH ROW
    WHEN (OLD.user_max_concurrency IS DISTINCT FROM NEW.user_max_concurrency)
    EXECUTE FUNCTION public.queue_replace_all_users();
