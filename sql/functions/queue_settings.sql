-- What every process needs to know of the queue's configuration, readable by
-- every role: which schema this is (so that no tool reads queue_migrations or
-- queue_repeatables) and the limits the reaper enforces.
--
-- The schema is current for a version of the package when schema_version is
-- the highest numbered migration it ships and functions_checksum the checksum
-- of its repeatable files (mobvibe.sql.migrate.schema_is_current): SHA-256 of
-- one "name checksum" line per file as last applied, in name order.

-- The result gained functions_checksum, then the caps of events and releases,
-- then the users' default limit: a function's result columns cannot change in
-- place.
DROP FUNCTION IF EXISTS public.queue_settings();

CREATE OR REPLACE FUNCTION public.queue_settings()
RETURNS TABLE (schema_version integer, heartbeat_timeout interval, retain_completed interval,
               retain_failed interval, backoff_base interval, backoff_cap interval,
               backoff_jitter double precision, functions_checksum text,
               max_events_per_attempt integer, max_event_bytes_per_attempt bigint,
               max_releases_per_job integer, user_max_concurrency integer)
LANGUAGE sql STABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
    SELECT (SELECT max(m.version) FROM public.queue_migrations m),
           c.heartbeat_timeout, c.retain_completed, c.retain_failed,
           c.backoff_base, c.backoff_cap, c.backoff_jitter,
           (SELECT encode(sha256(convert_to(
                       string_agg(r.name || ' ' || r.checksum || E'\n', ''
                                  ORDER BY r.name COLLATE "C"), 'UTF8')), 'hex')
            FROM public.queue_repeatables r),
           c.max_events_per_attempt, c.max_event_bytes_per_attempt, c.max_releases_per_job,
           c.user_max_concurrency
    FROM public.queue_config c
$$;
