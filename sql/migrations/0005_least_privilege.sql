-- Containment and least privilege, the SQL half.
--
-- 1. No function runs code that a role could have planted. An overload with a
--    better-matching signature in a schema others can write to (public, with
--    CREATE granted, as on PostgreSQL <= 14 by default) wins over pg_catalog's
--    whatever the search_path order: queue_backoff's power(2, n) ran a
--    public.power(integer, integer) as the owner. Every function is re-created
--    here with search_path = pg_catalog, pg_temp (trigger functions too), our
--    tables and functions named public.*, and our own calls exact-typed.
-- 2. The test clock (mobvibe.now) is honoured only where the owner switched it
--    on (queue_config.test_clock): SECURITY DEFINER functions trust queue_now().
-- 3. The reaper's limits live in queue_config: a caller of queue_reap_expired
--    or queue_prune cannot expire live attempts early or delete young jobs.
-- 4. The token-less plan calls are the operator's own overloads; a worker must
--    present the lease of the attempt it holds.
-- 5. Four group roles, each for one job (see docs/backend/JOB_QUEUE.md).
-- 6. A direct INSERT creates a pending job and nothing else.

-- -- settings ------------------------------------------------------------------

ALTER TABLE public.queue_config
    ADD COLUMN IF NOT EXISTS test_clock boolean NOT NULL DEFAULT false,
    ADD COLUMN IF NOT EXISTS heartbeat_timeout interval NOT NULL DEFAULT '30 seconds',
    -- NULL: keep forever
    ADD COLUMN IF NOT EXISTS retain_completed interval DEFAULT '7 days',
    ADD COLUMN IF NOT EXISTS retain_failed interval DEFAULT '30 days';

DO $$
DECLARE
    c record;
BEGIN
    FOR c IN SELECT * FROM (VALUES
        ('public.queue_config'::regclass, 'queue_config_heartbeat_timeout_check',
         $c$CHECK (heartbeat_timeout >= '1 second')$c$),
        ('public.queue_config'::regclass, 'queue_config_retain_completed_check',
         $c$CHECK (retain_completed > '0')$c$),
        ('public.queue_config'::regclass, 'queue_config_retain_failed_check',
         $c$CHECK (retain_failed > '0')$c$),
        ('public.coding_jobs'::regclass, 'coding_jobs_attempt_check',
         $c$CHECK (attempt >= 0)$c$)
    ) AS t (rel, name, definition)
    LOOP
        IF NOT EXISTS (SELECT 1 FROM pg_catalog.pg_constraint
                       WHERE conrelid = c.rel::oid AND conname = c.name) THEN
            EXECUTE pg_catalog.format('ALTER TABLE %s ADD CONSTRAINT %I %s',
                                      c.rel, c.name, c.definition);
        END IF;
    END LOOP;
END
$$;

-- -- the clock ---------------------------------------------------------------------

-- mobvibe.now, where the owner switched the test clock on; else the real now().
CREATE OR REPLACE FUNCTION public.queue_test_clock() RETURNS timestamptz
LANGUAGE plpgsql STABLE PARALLEL SAFE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    IF (SELECT c.test_clock FROM public.queue_config c) THEN
        RETURN current_setting('mobvibe.now')::timestamptz;
    END IF;
    RETURN now();
END
$$;

-- queue_now() stays a plain SQL function with no SET clause, so that the
-- planner inlines it (it is evaluated per row in the claim and the stats). An
-- inlined body is parsed in the caller's search_path, hence every name in it,
-- operators included, is qualified. Production never sets mobvibe.now and pays
-- one current_setting(); a session that sets it asks queue_test_clock().
CREATE OR REPLACE FUNCTION public.queue_now() RETURNS timestamptz
LANGUAGE sql STABLE PARALLEL SAFE AS $$
    SELECT CASE WHEN pg_catalog.current_setting('mobvibe.now', true) OPERATOR(pg_catalog.<>) ''
                THEN public.queue_test_clock()
                ELSE pg_catalog.now() END
$$;

-- -- helpers --------------------------------------------------------------------------

-- See 0002: min(cap, base * 2^(failures-1)) * (1 + jitter * U[0,1]), in seconds.
-- 2.0::double precision: power(integer, integer) is exactly what a planted
-- overload would have matched.
CREATE OR REPLACE FUNCTION public.queue_backoff(failures integer) RETURNS interval
LANGUAGE sql VOLATILE SET search_path = pg_catalog, pg_temp AS $$
    SELECT make_interval(secs => least(extract(epoch FROM c.backoff_cap)::double precision,
                                       extract(epoch FROM c.backoff_base)::double precision
                                       * power(2.0::double precision,
                                               least(greatest(failures - 1, 0), 100)::double precision))
                                 * (1.0::double precision + c.backoff_jitter * random()))
    FROM public.queue_config c
$$;

-- Record a failed attempt (see 0002): with a lease, only the attempt holding it;
-- with NULL, any pending or processing job (the operator's path). Executable by
-- the owner alone: the entry points below decide who may take which path.
CREATE OR REPLACE FUNCTION public.queue_record_failure(job_id_param uuid, error_msg text,
                                                       lease_token_param uuid, reason_param text)
RETURNS boolean
LANGUAGE plpgsql VOLATILE SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    new_status text;
    ts timestamptz := public.queue_now();
BEGIN
    UPDATE public.coding_jobs j
    -- least(): an operator may have lowered max_retries to retry_count; this
    -- failure is then the last one, not a CHECK violation.
    SET retry_count  = least(j.retry_count + 1, j.max_retries),
        status       = CASE WHEN j.retry_count + 1 >= j.max_retries THEN 'failed' ELSE 'pending' END,
        run_at       = CASE WHEN j.retry_count + 1 >= j.max_retries THEN j.run_at
                            ELSE ts + public.queue_backoff((j.retry_count + 1)::integer) END,
        completed_at = CASE WHEN j.retry_count + 1 >= j.max_retries THEN ts END,
        error_message = coalesce(error_msg, reason_param, 'error'),
        end_reason   = coalesce(reason_param, 'error'),
        heartbeat_at = NULL,
        updated_at   = ts
    WHERE j.id = job_id_param
      AND CASE WHEN lease_token_param IS NULL THEN j.status IN ('pending', 'processing')
               ELSE j.status = 'processing' AND j.lease_token = lease_token_param END
    RETURNING j.status INTO new_status;
    IF NOT FOUND THEN
        RETURN NULL;
    END IF;
    RETURN new_status = 'pending';
END
$$;

-- -- the plan's functions -----------------------------------------------------------

-- Overloads with defaults cannot lose them in place: drop the lease-or-not
-- signatures of 0002, so that complete_job(id) and fail_job(id, msg) name the
-- operator's overloads below and nothing else.
DROP FUNCTION IF EXISTS public.complete_job(uuid, uuid);
DROP FUNCTION IF EXISTS public.fail_job(uuid, text, uuid, text);
DROP FUNCTION IF EXISTS public.queue_reap_expired(interval, integer);
DROP FUNCTION IF EXISTS public.queue_prune(text, interval, integer);

-- See 0002; the hot functions are PL/pgSQL for their cached plans.
CREATE OR REPLACE FUNCTION public.claim_next_job(worker_id_param text DEFAULT NULL)
RETURNS TABLE (job_id uuid, session_id uuid, prompt text, lease_token uuid,
               attempt integer, retry_count integer, max_retries integer, priority smallint)
LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
#variable_conflict use_column
DECLARE
    ts timestamptz := public.queue_now();
BEGIN
    RETURN QUERY
    UPDATE public.coding_jobs j
    SET status = 'processing', started_at = ts, updated_at = ts, heartbeat_at = ts,
        worker_id = worker_id_param, lease_token = gen_random_uuid(),
        attempt = j.attempt + 1, end_reason = NULL
    WHERE j.id = (
        SELECT c.id FROM public.coding_jobs c
        WHERE c.status = 'pending' AND c.run_at <= public.queue_now()
        ORDER BY c.priority DESC, c.created_at, c.seq
        LIMIT 1
        FOR UPDATE SKIP LOCKED)
    -- The casts: a table made from the plan's schema has integer priorities.
    RETURNING j.id, j.session_id, j.prompt, j.lease_token, j.attempt::integer,
              j.retry_count::integer, j.max_retries::integer, j.priority::smallint;
END
$$;

-- The worker's completion: only the attempt holding the lease (true also when
-- that same attempt already completed it: a retried commit). A NULL lease
-- completes nothing.
CREATE FUNCTION public.complete_job(job_id_param uuid, lease_token_param uuid)
RETURNS boolean
LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    ts timestamptz := public.queue_now();
BEGIN
    IF lease_token_param IS NULL THEN
        RETURN false;
    END IF;
    UPDATE public.coding_jobs
    SET status = 'completed', completed_at = ts, updated_at = ts, heartbeat_at = NULL,
        end_reason = 'completed'
    WHERE id = job_id_param AND status = 'processing' AND lease_token = lease_token_param;
    RETURN FOUND OR EXISTS (SELECT 1 FROM public.coding_jobs
                            WHERE id = job_id_param AND lease_token = lease_token_param
                              AND status = 'completed');
END
$$;

-- The plan's call, the operator's path: completes any pending or processing
-- job, never a completed or failed one. The token is cleared, so that the
-- retried-commit answer above is never given to an attempt that was overruled.
CREATE OR REPLACE FUNCTION public.complete_job(job_id_param uuid)
RETURNS boolean
LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    ts timestamptz := public.queue_now();
BEGIN
    UPDATE public.coding_jobs
    SET status = 'completed', completed_at = ts, updated_at = ts, heartbeat_at = NULL,
        end_reason = 'completed', lease_token = NULL
    WHERE id = job_id_param AND status IN ('pending', 'processing');
    RETURN FOUND;
END
$$;

-- The worker's failure: true will retry, false dead-lettered, NULL nothing
-- changed (a stale or NULL lease, a finished job).
CREATE FUNCTION public.fail_job(job_id_param uuid, error_msg text, lease_token_param uuid,
                                reason_param text DEFAULT 'error')
RETURNS boolean
LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    IF lease_token_param IS NULL THEN
        RETURN NULL;
    END IF;
    RETURN public.queue_record_failure(job_id_param, error_msg, lease_token_param, reason_param);
END
$$;

-- The plan's call, the operator's path: a failure of any pending or processing
-- job, atomically, so that concurrent failures each count.
CREATE OR REPLACE FUNCTION public.fail_job(job_id_param uuid, error_msg text)
RETURNS boolean
LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    RETURN public.queue_record_failure(job_id_param, error_msg, NULL::uuid, 'error'::text);
END
$$;

CREATE OR REPLACE FUNCTION public.get_queue_stats()
RETURNS TABLE (pending_count bigint, processing_count bigint, completed_count bigint,
               failed_count bigint, oldest_pending_age interval,
               waiting_retry_count bigint, next_run_at timestamptz)
LANGUAGE sql STABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
    SELECT
        (SELECT count(*) FROM public.coding_jobs WHERE status = 'pending'),
        (SELECT count(*) FROM public.coding_jobs WHERE status = 'processing'),
        (SELECT count(*) FROM public.coding_jobs WHERE status = 'completed'),
        (SELECT count(*) FROM public.coding_jobs WHERE status = 'failed'),
        (SELECT public.queue_now() - min(created_at) FROM public.coding_jobs
         WHERE status = 'pending'),
        (SELECT count(*) FROM public.coding_jobs
         WHERE status = 'pending' AND run_at > public.queue_now()),
        (SELECT min(run_at) FROM public.coding_jobs
         WHERE status = 'pending' AND run_at > public.queue_now())
$$;

-- -- the worker's functions -------------------------------------------------------------

CREATE OR REPLACE FUNCTION public.queue_complete_and_claim(job_id_param uuid, lease_token_param uuid,
                                                           worker_id_param text DEFAULT NULL)
RETURNS TABLE (completed boolean, job_id uuid, session_id uuid, prompt text, lease_token uuid,
               attempt integer, retry_count integer, max_retries integer, priority smallint)
LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    ok boolean := public.complete_job(job_id_param, lease_token_param);
BEGIN
    RETURN QUERY SELECT ok, c.* FROM public.claim_next_job(worker_id_param) c;
    IF NOT FOUND THEN
        RETURN QUERY SELECT ok, NULL::uuid, NULL::uuid, NULL::text, NULL::uuid,
                            NULL::integer, NULL::integer, NULL::integer, NULL::smallint;
    END IF;
END
$$;

CREATE OR REPLACE FUNCTION public.queue_heartbeat(job_id_param uuid, lease_token_param uuid)
RETURNS boolean
LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    UPDATE public.coding_jobs SET heartbeat_at = public.queue_now()
    WHERE id = job_id_param AND lease_token = lease_token_param AND status = 'processing';
    RETURN FOUND;
END
$$;

CREATE OR REPLACE FUNCTION public.queue_release_job(job_id_param uuid, lease_token_param uuid,
                                                    reason_param text DEFAULT 'released at shutdown')
RETURNS boolean
LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    released public.coding_jobs%ROWTYPE;
BEGIN
    UPDATE public.coding_jobs
    SET status = 'pending', run_at = public.queue_now(), heartbeat_at = NULL,
        end_reason = reason_param, updated_at = public.queue_now()
    WHERE id = job_id_param AND lease_token = lease_token_param AND status = 'processing'
    RETURNING * INTO released;
    IF NOT FOUND THEN
        RETURN false;
    END IF;
    PERFORM pg_notify('new_job', json_build_object('job_id', released.id,
        'session_id', released.session_id, 'priority', released.priority)::text);
    RETURN true;
END
$$;

-- The processing jobs claimed under a worker id, with their leases: the
-- supervisor gives back those a dead worker never started.
CREATE OR REPLACE FUNCTION public.queue_claims_of_worker(worker_id_param text)
RETURNS TABLE (job_id uuid, lease_token uuid)
LANGUAGE sql STABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
    SELECT c.id, c.lease_token FROM public.coding_jobs c
    WHERE c.status = 'processing' AND c.worker_id = worker_id_param
$$;

-- Requeue, as failed attempts, processing jobs silent for longer than the
-- heartbeat timeout that operators configured: whoever calls, no live attempt
-- is expired early. Locked SKIP LOCKED and re-checked under the lock (two
-- reapers never count one attempt twice), then failed in session order (a
-- dead letter locks its session; two reapers in different orders deadlock).
CREATE FUNCTION public.queue_reap_expired(batch_size integer DEFAULT 500)
RETURNS TABLE (job_id uuid, session_id uuid, will_retry boolean)
LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    timeout interval := (SELECT c.heartbeat_timeout FROM public.queue_config c);
    stale record;
BEGIN
    FOR stale IN
        WITH locked AS MATERIALIZED (
            SELECT c.id, c.session_id, c.lease_token FROM public.coding_jobs c
            WHERE c.status = 'processing' AND c.heartbeat_at < public.queue_now() - timeout
            ORDER BY c.heartbeat_at
            LIMIT greatest(batch_size, 0)
            FOR UPDATE SKIP LOCKED)
        SELECT l.id, l.session_id, l.lease_token FROM locked l ORDER BY l.session_id, l.id
    LOOP
        job_id := stale.id;
        session_id := stale.session_id;
        will_retry := public.queue_record_failure(
            stale.id, 'heartbeat expired: no heartbeat for ' || timeout::text,
            stale.lease_token, 'heartbeat_expired'::text);
        RETURN NEXT;
    END LOOP;
END
$$;

-- Delete up to batch_size `status_param` jobs (completed or failed) that
-- finished longer ago than the configured retention (none when it is NULL).
-- Called in a loop, one short transaction per batch.
CREATE FUNCTION public.queue_prune(status_param text, batch_size integer DEFAULT 1000)
RETURNS integer
LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    retention interval;
    deleted integer;
BEGIN
    IF status_param IS NULL OR status_param NOT IN ('completed', 'failed') THEN
        RAISE EXCEPTION 'queue_prune: status must be completed or failed, got %', status_param
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    SELECT CASE status_param WHEN 'completed' THEN c.retain_completed ELSE c.retain_failed END
    INTO retention FROM public.queue_config c;
    IF retention IS NULL THEN
        RETURN 0;  -- kept forever
    END IF;
    DELETE FROM public.coding_jobs
    WHERE id IN (SELECT c.id FROM public.coding_jobs c
                 WHERE c.status = status_param AND c.completed_at < public.queue_now() - retention
                 ORDER BY c.completed_at
                 LIMIT greatest(batch_size, 0)
                 FOR UPDATE SKIP LOCKED);
    GET DIAGNOSTICS deleted = ROW_COUNT;
    RETURN deleted;
END
$$;

-- When each reaper last swept, and its totals. Each CronJob run is a new pod,
-- so a new host:pid row: rows of reapers not seen for a week are dropped on
-- the way, or the table would grow forever.
CREATE OR REPLACE FUNCTION public.queue_record_reaper_run(reaper_param text, requeued_param bigint,
                                                          dead_lettered_param bigint,
                                                          pruned_param bigint)
RETURNS void
LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    ts timestamptz := public.queue_now();
BEGIN
    DELETE FROM public.queue_reaper_runs
    WHERE last_sweep_at < ts - interval '7 days' AND reaper <> reaper_param;
    INSERT INTO public.queue_reaper_runs AS r (reaper, last_sweep_at, requeued, dead_lettered,
                                                pruned)
    VALUES (reaper_param, ts, greatest(requeued_param, 0), greatest(dead_lettered_param, 0),
            greatest(pruned_param, 0))
    ON CONFLICT (reaper) DO UPDATE
    SET last_sweep_at = excluded.last_sweep_at,
        requeued = r.requeued + excluded.requeued,
        dead_lettered = r.dead_lettered + excluded.dead_lettered,
        pruned = r.pruned + excluded.pruned;
END
$$;

CREATE OR REPLACE FUNCTION public.queue_next_run_at()
RETURNS timestamptz
LANGUAGE sql STABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
    SELECT min(run_at) FROM public.coding_jobs WHERE status = 'pending'
$$;

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

-- -- the operator's functions --------------------------------------------------------------

CREATE OR REPLACE FUNCTION public.queue_requeue_failed(job_id_param uuid)
RETURNS boolean
LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    requeued public.coding_jobs%ROWTYPE;
BEGIN
    UPDATE public.coding_jobs
    SET status = 'pending', retry_count = 0, run_at = public.queue_now(), completed_at = NULL,
        end_reason = 'requeued from dead letters', updated_at = public.queue_now()
    WHERE id = job_id_param AND status = 'failed'
    RETURNING * INTO requeued;
    IF NOT FOUND THEN
        RETURN false;
    END IF;
    UPDATE public.coding_sessions s
    SET status = 'active', error_message = NULL, updated_at = public.queue_now()
    WHERE s.id = requeued.session_id AND s.status = 'failed'
      AND NOT EXISTS (SELECT 1 FROM public.coding_jobs j
                      WHERE j.session_id = s.id AND j.status = 'failed');
    PERFORM pg_notify('new_job', json_build_object('job_id', requeued.id,
        'session_id', requeued.session_id, 'priority', requeued.priority)::text);
    RETURN true;
END
$$;

-- An operator's deliberate purge of the dead letters: up to batch_size jobs
-- that failed longer ago than `older_than` (0: all of them), whatever the
-- retention. Called in a loop, one short transaction per batch.
CREATE OR REPLACE FUNCTION public.queue_purge_failed(older_than interval,
                                                     batch_size integer DEFAULT 1000)
RETURNS integer
LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    deleted integer;
BEGIN
    DELETE FROM public.coding_jobs
    WHERE id IN (SELECT c.id FROM public.coding_jobs c
                 WHERE c.status = 'failed' AND c.completed_at <= public.queue_now() - older_than
                 ORDER BY c.completed_at
                 LIMIT greatest(batch_size, 0)
                 FOR UPDATE SKIP LOCKED);
    GET DIAGNOSTICS deleted = ROW_COUNT;
    RETURN deleted;
END
$$;

-- -- triggers --------------------------------------------------------------------------------

CREATE OR REPLACE FUNCTION public.queue_fail_session() RETURNS trigger
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    UPDATE public.coding_sessions
    SET status = 'failed', error_message = NEW.error_message, updated_at = public.queue_now()
    WHERE id = NEW.session_id;
    RETURN NULL;
END
$$;

CREATE OR REPLACE FUNCTION public.notify_job_status_change() RETURNS trigger
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    PERFORM pg_notify('job_status_changed', json_build_object(
        'job_id', NEW.id, 'session_id', NEW.session_id,
        'old_status', OLD.status, 'new_status', NEW.status)::text);
    RETURN NULL;
END
$$;

-- A direct INSERT creates a pending job, due at its run_at, and nothing else:
-- every other state is reached through the functions above. One statement-level
-- trigger, one pass over the new rows: each is announced on new_job and checked
-- in the same scan, and the first impossible one aborts the statement (its
-- notifications, sent only at commit, with it). The single-job enqueue is
-- benchmarked: no per-row trigger. created_at and updated_at are the insert's
-- own time (their default, now()).
CREATE OR REPLACE FUNCTION public.queue_accept_new_jobs() RETURNS trigger
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    problem text;
    announced bigint;
BEGIN
    SELECT count(pg_notify('new_job', json_build_object(
               'job_id', n.id, 'session_id', n.session_id, 'priority', n.priority)::text)),
           min(CASE
               WHEN n.status IS DISTINCT FROM 'pending' THEN 'status ' || coalesce(n.status, 'NULL')
               WHEN n.attempt <> 0 THEN 'attempt ' || n.attempt
               WHEN n.retry_count <> 0 THEN 'retry_count ' || n.retry_count
               WHEN n.lease_token IS NOT NULL THEN 'a lease_token'
               WHEN n.heartbeat_at IS NOT NULL THEN 'a heartbeat_at'
               WHEN n.worker_id IS NOT NULL THEN 'a worker_id'
               WHEN n.started_at IS NOT NULL THEN 'a started_at'
               WHEN n.completed_at IS NOT NULL THEN 'a completed_at'
               WHEN n.end_reason IS NOT NULL THEN 'an end_reason'
               WHEN n.error_message IS NOT NULL THEN 'an error_message'
               WHEN n.created_at IS DISTINCT FROM now() THEN 'created_at ' || n.created_at
               WHEN n.updated_at IS DISTINCT FROM now() THEN 'updated_at ' || n.updated_at
               END || ' (job ' || n.id || ')')
    INTO announced, problem
    FROM new_jobs n;
    IF problem IS NOT NULL THEN
        RAISE EXCEPTION 'a new job must be pending with no attempt yet, got %', problem
            USING ERRCODE = 'check_violation', TABLE = 'coding_jobs',
                  CONSTRAINT = 'coding_jobs_insert_check',
                  HINT = 'insert session_id, prompt, priority, max_retries and run_at only; '
                         'the queue''s functions make every other change';
    END IF;
    RETURN NULL;
END
$$;

DROP TRIGGER IF EXISTS on_job_created ON public.coding_jobs;
CREATE TRIGGER on_job_created
    AFTER INSERT ON public.coding_jobs
    REFERENCING NEW TABLE AS new_jobs
    FOR EACH STATEMENT EXECUTE FUNCTION public.queue_accept_new_jobs();
DROP FUNCTION IF EXISTS public.notify_new_job();

-- -- roles -----------------------------------------------------------------------------------

-- Roles are cluster-wide (see 0004): losing the race to create one is fine.
DO $$
DECLARE
    group_role text;
BEGIN
    FOREACH group_role IN ARRAY ARRAY['mobvibe_producer', 'mobvibe_worker', 'mobvibe_monitor',
                                      'mobvibe_operator'] LOOP
        IF NOT EXISTS (SELECT 1 FROM pg_catalog.pg_roles WHERE rolname = group_role) THEN
            BEGIN
                EXECUTE pg_catalog.format('CREATE ROLE %I NOLOGIN', group_role);
            EXCEPTION WHEN unique_violation OR duplicate_object THEN
                NULL;
            END;
        END IF;
    END LOOP;
    -- An operator does what the other three do, and more.
    GRANT mobvibe_producer, mobvibe_worker, mobvibe_monitor TO mobvibe_operator;
EXCEPTION WHEN insufficient_privilege THEN
    RAISE NOTICE 'cannot create or grant the roles mobvibe_producer, mobvibe_worker, '
                 'mobvibe_monitor, mobvibe_operator (no CREATEROLE): create them by hand';
END
$$;

-- -- privileges --------------------------------------------------------------------------------

-- Start from nothing: every function, and the queue's tables, for every role
-- that 0004 or Supabase's default privileges gave something. coding_sessions
-- belongs to another phase: only the grants that 0004 made on it are taken back.
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
                             'notify_job_status_change')
               OR p.proname LIKE 'queue\_%')
    LOOP
        EXECUTE pg_catalog.format('REVOKE ALL ON FUNCTION %s FROM PUBLIC', fn);
        FOREACH grantee IN ARRAY coalesce(existing, '{}') LOOP
            EXECUTE pg_catalog.format('REVOKE ALL ON FUNCTION %s FROM %I', fn, grantee);
        END LOOP;
    END LOOP;
    FOREACH grantee IN ARRAY coalesce(existing, '{}') LOOP
        EXECUTE pg_catalog.format(
            'REVOKE ALL ON public.coding_jobs, public.queue_config, public.queue_reaper_runs FROM %I',
            grantee);
        IF pg_catalog.to_regclass('public.queue_migrations') IS NOT NULL THEN
            EXECUTE pg_catalog.format('REVOKE ALL ON public.queue_migrations FROM %I', grantee);
        END IF;
        IF grantee LIKE 'mobvibe\_%' THEN
            EXECUTE pg_catalog.format('REVOKE ALL ON public.coding_sessions FROM %I', grantee);
        END IF;
    END LOOP;
END
$$;

DO $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_catalog.pg_roles WHERE rolname = 'mobvibe_operator') THEN
        RETURN;  -- the roles could not be created: see the notice above
    END IF;

    -- Every role reads the clock and the settings.
    GRANT EXECUTE ON FUNCTION public.queue_now(), public.queue_test_clock(),
                              public.queue_settings()
        TO mobvibe_producer, mobvibe_worker, mobvibe_monitor, mobvibe_operator;

    -- mobvibe_producer: creates sessions and jobs (the plan's plain INSERTs, the
    -- columns a job may be given) and reads them.
    GRANT SELECT, INSERT (id) ON public.coding_sessions TO mobvibe_producer;
    GRANT SELECT, INSERT (session_id, prompt, priority, max_retries, run_at)
        ON public.coding_jobs TO mobvibe_producer;

    -- mobvibe_worker: the supervisor, its workers and the reaper. Every write
    -- is a function that wants the attempt's lease or keeps to the configured
    -- limits; reads of jobs and sweeps for the status pages and metrics.
    GRANT SELECT ON public.coding_jobs, public.coding_sessions, public.queue_reaper_runs
        TO mobvibe_worker;
    GRANT EXECUTE ON FUNCTION
        public.claim_next_job(text), public.complete_job(uuid, uuid),
        public.fail_job(uuid, text, uuid, text), public.queue_complete_and_claim(uuid, uuid, text),
        public.queue_heartbeat(uuid, uuid), public.queue_release_job(uuid, uuid, text),
        public.queue_claims_of_worker(text), public.queue_reap_expired(integer),
        public.queue_prune(text, integer),
        public.queue_record_reaper_run(text, bigint, bigint, bigint),
        public.get_queue_stats(), public.queue_next_run_at()
        TO mobvibe_worker;

    -- mobvibe_monitor: statistics, not prompts.
    GRANT SELECT ON public.queue_reaper_runs TO mobvibe_monitor;
    GRANT EXECUTE ON FUNCTION public.get_queue_stats(), public.queue_next_run_at()
        TO mobvibe_monitor;

    -- mobvibe_operator: the plan's token-less calls, the dead letters, the
    -- configuration (not the test clock, which is the owner's), the migrations.
    GRANT EXECUTE ON FUNCTION
        public.complete_job(uuid), public.fail_job(uuid, text),
        public.queue_requeue_failed(uuid), public.queue_purge_failed(interval, integer)
        TO mobvibe_operator;
    GRANT SELECT ON public.queue_config TO mobvibe_operator;
    GRANT UPDATE (backoff_base, backoff_cap, backoff_jitter, heartbeat_timeout,
                  retain_completed, retain_failed)
        ON public.queue_config TO mobvibe_operator;
    IF pg_catalog.to_regclass('public.queue_migrations') IS NOT NULL THEN
        GRANT SELECT ON public.queue_migrations TO mobvibe_operator;
    END IF;

    -- Supabase: the edge functions' service_role keeps the plan's calls as an
    -- operator; anon and authenticated keep nothing (revoked above).
    IF EXISTS (SELECT 1 FROM pg_catalog.pg_roles WHERE rolname = 'service_role') THEN
        GRANT mobvibe_operator TO service_role;
    END IF;
EXCEPTION WHEN insufficient_privilege THEN
    RAISE NOTICE 'cannot grant the queue''s roles their rights: see docs/backend/JOB_QUEUE.md';
END
$$;
