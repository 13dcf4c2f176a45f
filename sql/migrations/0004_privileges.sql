-- Least privilege. PostgreSQL lets PUBLIC execute every new function, so on
-- Supabase any anonymous client could call claim_next_job over RPC. Revoke
-- that, and grant the queue's functions to two group roles instead:
--   mobvibe_worker  - the supervisor, its workers and the reaper
--   mobvibe_monitor - read-only statistics (dashboards, KEDA)
-- A login role joins with: GRANT mobvibe_worker TO my_login;

-- Roles are cluster-wide: another database of the cluster may be migrating at
-- the same moment (the advisory lock is per database), so losing the race to
-- create a role is fine.
DO $$
DECLARE
    group_role text;
BEGIN
    FOREACH group_role IN ARRAY ARRAY['mobvibe_worker', 'mobvibe_monitor'] LOOP
        IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = group_role) THEN
            BEGIN
                EXECUTE format('CREATE ROLE %I NOLOGIN', group_role);
            EXCEPTION WHEN unique_violation OR duplicate_object THEN
                NULL;
            END;
        END IF;
    END LOOP;
EXCEPTION WHEN insufficient_privilege THEN
    RAISE NOTICE 'cannot create roles mobvibe_worker/mobvibe_monitor (no CREATEROLE); grant the functions by hand';
END
$$;

REVOKE ALL ON FUNCTION
    queue_now(), queue_backoff(integer), queue_fail_session(),
    notify_new_job(), notify_job_status_change(),
    claim_next_job(text), complete_job(uuid, uuid), fail_job(uuid, text, uuid, text),
    queue_complete_and_claim(uuid, uuid, text), queue_heartbeat(uuid, uuid),
    queue_release_job(uuid, uuid, text), queue_reap_expired(interval, integer),
    queue_requeue_failed(uuid), queue_prune(text, interval, integer),
    get_queue_stats(), queue_next_run_at()
FROM PUBLIC;

-- Supabase grants EXECUTE to its API roles by default privileges: take it
-- back from the anonymous and end-user roles; the service role keeps the plan's
-- calls working from edge functions.
DO $$
DECLARE
    fn text;
    fns text[] := ARRAY[
        'claim_next_job(text)', 'complete_job(uuid, uuid)', 'fail_job(uuid, text, uuid, text)',
        'queue_complete_and_claim(uuid, uuid, text)', 'queue_heartbeat(uuid, uuid)',
        'queue_release_job(uuid, uuid, text)', 'queue_reap_expired(interval, integer)',
        'queue_requeue_failed(uuid)', 'queue_prune(text, interval, integer)',
        'get_queue_stats()', 'queue_next_run_at()', 'queue_now()', 'queue_backoff(integer)'];
    api_role text;
BEGIN
    FOREACH api_role IN ARRAY ARRAY['anon', 'authenticated'] LOOP
        IF EXISTS (SELECT 1 FROM pg_roles WHERE rolname = api_role) THEN
            FOREACH fn IN ARRAY fns LOOP
                EXECUTE format('REVOKE ALL ON FUNCTION %s FROM %I', fn, api_role);
            END LOOP;
        END IF;
    END LOOP;
    FOREACH api_role IN ARRAY ARRAY['mobvibe_worker', 'service_role'] LOOP
        IF EXISTS (SELECT 1 FROM pg_roles WHERE rolname = api_role) THEN
            FOREACH fn IN ARRAY fns LOOP
                EXECUTE format('GRANT EXECUTE ON FUNCTION %s TO %I', fn, api_role);
            END LOOP;
            EXECUTE format('GRANT SELECT ON coding_jobs, coding_sessions, queue_config,
                            queue_reaper_runs TO %I', api_role);
            EXECUTE format('GRANT INSERT ON coding_jobs, coding_sessions TO %I', api_role);
            EXECUTE format('GRANT INSERT, UPDATE, DELETE ON queue_reaper_runs TO %I', api_role);
        END IF;
    END LOOP;
    IF EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'mobvibe_monitor') THEN
        GRANT EXECUTE ON FUNCTION get_queue_stats(), queue_now() TO mobvibe_monitor;
        GRANT SELECT ON queue_reaper_runs TO mobvibe_monitor;
    END IF;
END
$$;
