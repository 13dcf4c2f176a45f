-- What every process needs to know of the queue's configuration, readable by
-- every role: the schema version (so that no tool reads queue_migrations) and
-- the limits the reaper enforces.
CREATE OR REPLACE FUNCTION public.queue_settings()
RETURNS TABLE (schema_version integer, heartbeat_timeout interval, retain_completed interval,
               retain_failed interval, backoff_base interval, backoff_cap interval,
               backoff_jitter double precision)
LANGUAGE sql STABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
    SELECT (SELECT max(m.version) FROM public.queue_migrations m),
           c.heartbeat_timeout, c.retain_completed, c.retain_failed,
           c.backoff_base, c.backoff_cap, c.backoff_jitter
    FROM public.queue_config c
$$;
