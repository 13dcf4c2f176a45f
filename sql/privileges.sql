-- Who may do what: every privilege on the queue's functions and tables, for the
-- four group roles (created by migration 0005) and Supabase's API roles.
--
-- Applied after the function files, every time one of them was applied: a
-- function that was dropped and created again (a changed signature) comes back
-- executable by PUBLIC, and Supabase's default privileges give every new table
-- and function to its API roles. So this file starts from nothing, then grants
-- the whole matrix: what it says is all that the queue's roles hold.
-- coding_sessions belongs to another phase: only the queue's own roles lose
-- their grants on it.
--
-- Supabase's phone role, authenticated, is granted its rights by
-- sql/row_security.sql, applied after this file every time.
--
-- A new function is revoked from PUBLIC here without a word (the loop below
-- finds it by name); grant it below to the role that calls it.

-- The lock that serialises migration runs is a lock on queue_migrations (LOCK
-- TABLE needs UPDATE, DELETE, TRUNCATE or INSERT on it): its owner's alone,
-- whatever default privileges gave PUBLIC. The caps' totals are read through
-- get_queue_stats().
REVOKE ALL ON public.queue_migrations, public.queue_counters FROM PUBLIC;
-- Users' limits and turns: kept through functions (queue_set_user_limit), read
-- through queue_user_list().
REVOKE ALL ON public.queue_users, public.queue_user_limits FROM PUBLIC;
REVOKE ALL ON SEQUENCE public.queue_turn_seq FROM PUBLIC;

DO $$
DECLARE
    fn regprocedure;
    grantee text;
    existing text[];
BEGIN
    SELECT pg_catalog.array_agg(rolname) INTO existing FROM pg_catalog.pg_roles
    WHERE rolname IN ('mobvibe_producer', 'mobvibe_worker', 'mobvibe_monitor', 'mobvibe_operator',
                      'anon', 'authenticated', 'service_role');
    FOR fn IN
        SELECT p.oid::regprocedure FROM pg_catalog.pg_proc p
        WHERE p.pronamespace = 'public'::regnamespace
          AND (p.proname IN ('claim_next_job', 'complete_job', 'fail_job', 'get_queue_stats',
                             'cancel_job', 'notify_job_status_change')
               OR p.proname LIKE 'queue\_%')
    LOOP
        EXECUTE pg_catalog.format('REVOKE ALL ON FUNCTION %s FROM PUBLIC', fn);
        FOREACH grantee IN ARRAY coalesce(existing, '{}') LOOP
            EXECUTE pg_catalog.format('REVOKE ALL ON FUNCTION %s FROM %I', fn, grantee);
        END LOOP;
    END LOOP;
    FOREACH grantee IN ARRAY coalesce(existing, '{}') LOOP
        EXECUTE pg_catalog.format(
            'REVOKE ALL ON public.coding_jobs, public.coding_job_attempts, '
            'public.coding_job_events, public.queue_config, public.queue_reaper_runs, '
            'public.queue_users, public.queue_user_limits FROM %I',
            grantee);
        IF pg_catalog.to_regclass('public.queue_migrations') IS NOT NULL THEN
            EXECUTE pg_catalog.format('REVOKE ALL ON public.queue_migrations FROM %I', grantee);
        END IF;
        IF pg_catalog.to_regclass('public.queue_repeatables') IS NOT NULL THEN
            EXECUTE pg_catalog.format('REVOKE ALL ON public.queue_repeatables FROM %I', grantee);
        END IF;
        -- the owner's alone: read through get_queue_stats()
        EXECUTE pg_catalog.format('REVOKE ALL ON public.queue_counters FROM %I', grantee);
        IF grantee LIKE 'mobvibe\_%' THEN
            EXECUTE pg_catalog.format('REVOKE ALL ON public.coding_sessions FROM %I', grantee);
        END IF;
    END LOOP;
END
$$;

DO $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_catalog.pg_roles WHERE rolname = 'mobvibe_operator') THEN
        RETURN;  -- the roles could not be created (0005's notice): yours to make
    END IF;

    -- Every role reads the clock and the settings.
    GRANT EXECUTE ON FUNCTION public.queue_now(), public.queue_test_clock(),
                              public.queue_settings()
        TO mobvibe_producer, mobvibe_worker, mobvibe_monitor, mobvibe_operator;

    -- mobvibe_producer: creates sessions and jobs (the plan's plain INSERTs, the
    -- columns a job may be given), cancels and reads them.
    GRANT SELECT, INSERT (id, max_concurrency, user_id) ON public.coding_sessions TO mobvibe_producer;
    GRANT INSERT (session_id, prompt, priority, max_retries, run_at, idempotency_key)
        ON public.coding_jobs TO mobvibe_producer;
    GRANT SELECT ON public.coding_job_attempts, public.coding_job_events TO mobvibe_producer;
    GRANT EXECUTE ON FUNCTION public.cancel_job(uuid), public.queue_cancel_session(uuid)
        TO mobvibe_producer;

    -- mobvibe_worker: the supervisor, its workers and the reaper. Every write is
    -- a function that wants the attempt's lease or keeps to the configured
    -- limits; reads of jobs and sweeps for the status pages and metrics.
    GRANT SELECT ON public.coding_sessions, public.queue_reaper_runs,
                    public.coding_job_attempts, public.coding_job_events
        TO mobvibe_worker;
    GRANT EXECUTE ON FUNCTION
        public.claim_next_job(text, uuid), public.complete_job(uuid, uuid, text),
        public.fail_job(uuid, text, uuid, text, text),
        public.queue_complete_and_claim(uuid, uuid, text),
        public.queue_end_attempt(uuid, uuid, text, text, text),
        public.queue_end_and_claim(uuid, uuid, text, text, text, text, uuid),
        public.queue_heartbeat(uuid, uuid), public.queue_renew_leases(uuid[], uuid[]),
        public.queue_add_events(uuid, uuid, text[], jsonb[]),
        public.queue_set_output(uuid, uuid, text),
        public.queue_release_job(uuid, uuid, text),
        public.queue_claims_of_worker(text), public.queue_reap_expired(integer),
        public.queue_prune(text, integer), public.queue_sweep(text, integer, integer),
        public.queue_record_reaper_run(text, bigint, bigint, bigint),
        public.get_queue_stats(), public.queue_next_run_at(), public.queue_due_jobs(integer)
        TO mobvibe_worker;

    -- mobvibe_monitor: statistics, users' limits and counts; no prompts, no
    -- outputs, no events.
    GRANT SELECT ON public.queue_reaper_runs TO mobvibe_monitor;
    GRANT EXECUTE ON FUNCTION public.get_queue_stats(), public.queue_next_run_at(),
                              public.queue_due_jobs(integer), public.queue_user_list(boolean)
        TO mobvibe_monitor;

    -- mobvibe_operator: the plan's token-less calls, requeue and retry, purge,
    -- a session's concurrency, users' limits, the configuration (not the test clock, which is
    -- the owner's), the record of the migrations and function files (doctor).
    GRANT EXECUTE ON FUNCTION
        public.complete_job(uuid), public.fail_job(uuid, text),
        public.queue_requeue_failed(uuid), public.queue_retry_job(uuid),
        public.queue_purge_failed(interval, integer),
        public.queue_set_user_limit(uuid, integer), public.queue_user_list(boolean)
        TO mobvibe_operator;
    GRANT UPDATE (max_concurrency) ON public.coding_sessions TO mobvibe_operator;
    GRANT SELECT ON public.queue_config TO mobvibe_operator;
    GRANT UPDATE (backoff_base, backoff_cap, backoff_jitter, heartbeat_timeout,
                  retain_completed, retain_failed, max_events_per_attempt,
                  max_event_bytes_per_attempt, max_releases_per_job, user_max_concurrency)
        ON public.queue_config TO mobvibe_operator;
    IF pg_catalog.to_regclass('public.queue_migrations') IS NOT NULL THEN
        GRANT SELECT ON public.queue_migrations TO mobvibe_operator;
    END IF;
    IF pg_catalog.to_regclass('public.queue_repeatables') IS NOT NULL THEN
        GRANT SELECT ON public.queue_repeatables TO mobvibe_operator;
    END IF;

    -- A lease token is a secret of its attempt: its claim returns it to the
    -- claimer, and no role reads it from the table. The producer and the
    -- worker read every other column of coding_jobs (the operator, a member of
    -- both, as well).
    EXECUTE pg_catalog.format(
        'GRANT SELECT (%s) ON public.coding_jobs TO mobvibe_producer, mobvibe_worker',
        (SELECT pg_catalog.string_agg(pg_catalog.quote_ident(a.attname), ', ' ORDER BY a.attnum)
         FROM pg_catalog.pg_attribute a
         WHERE a.attrelid = 'public.coding_jobs'::regclass AND a.attnum > 0
           AND NOT a.attisdropped AND a.attname <> 'lease_token'));

    -- Supabase: the edge functions' service_role keeps the plan's calls as an
    -- operator; anon and authenticated keep nothing (revoked above).
    IF EXISTS (SELECT 1 FROM pg_catalog.pg_roles WHERE rolname = 'service_role') THEN
        GRANT mobvibe_operator TO service_role;
    END IF;
EXCEPTION WHEN insufficient_privilege THEN
    RAISE NOTICE 'cannot grant the queue''s roles their rights: see docs/backend/JOB_QUEUE.md';
END
$$;
