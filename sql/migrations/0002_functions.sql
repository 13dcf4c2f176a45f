-- The queue's functions: the contract of the plan (claim_next_job,
-- complete_job, fail_job, get_queue_stats) and the queue_* functions the
-- supervisor and the reaper need. Every state change is one locked statement
-- on the database clock; every write by an attempt is fenced by its lease.

-- The plan's signatures are replaced by ones with optional parameters; drop
-- them first so that a call such as complete_job(id) is never ambiguous.
-- get_queue_stats() keeps its signature but gains result columns, which
-- CREATE OR REPLACE cannot do.
DROP FUNCTION IF EXISTS claim_next_job();
DROP FUNCTION IF EXISTS complete_job(uuid);
DROP FUNCTION IF EXISTS fail_job(uuid, text);
DROP FUNCTION IF EXISTS get_queue_stats();

-- The one clock of the queue. Tests steer it per session with
-- SET mobvibe.now = '...'; production reads the transaction's now().
CREATE OR REPLACE FUNCTION queue_now() RETURNS timestamptz
LANGUAGE sql STABLE PARALLEL SAFE AS $$
    SELECT coalesce(nullif(current_setting('mobvibe.now', true), '')::timestamptz, now())
$$;

-- Delay before retry number `failures`: min(cap, base * 2^(failures-1)),
-- stretched by a random factor in [1, 1 + jitter] so that retries of jobs that
-- failed together do not all come back at the same instant. Computed in
-- seconds: as an interval, base * 2^(failures-1) overflows (10 s * 2^40 is
-- past the interval's ~292,000 years) long before failures reach max_retries.
CREATE OR REPLACE FUNCTION queue_backoff(failures integer) RETURNS interval
LANGUAGE sql VOLATILE AS $$
    SELECT make_interval(secs => least(extract(epoch FROM c.backoff_cap),
                                       extract(epoch FROM c.backoff_base)
                                       * power(2, least(greatest(failures - 1, 0), 100)))
                                 * (1 + c.backoff_jitter * random()))
    FROM queue_config c
$$;

-- Claim the due pending job of highest priority, oldest first. The lease
-- token it returns fences every later write of this attempt.
-- The hot functions (claim, complete, complete-and-claim, heartbeat) are
-- PL/pgSQL rather than SQL: a SQL function's body is parsed and planned again
-- at every call (before PostgreSQL 18), a PL/pgSQL one's plans are cached per
-- session; that was three quarters of the server's CPU per job.
CREATE OR REPLACE FUNCTION claim_next_job(worker_id_param text DEFAULT NULL)
RETURNS TABLE (job_id uuid, session_id uuid, prompt text, lease_token uuid,
               attempt integer, retry_count integer, max_retries integer, priority smallint)
LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = public, pg_temp AS $$
#variable_conflict use_column
DECLARE
    ts timestamptz := queue_now();
BEGIN
    RETURN QUERY
    UPDATE coding_jobs j
    SET status = 'processing', started_at = ts, updated_at = ts, heartbeat_at = ts,
        worker_id = worker_id_param, lease_token = gen_random_uuid(),
        attempt = j.attempt + 1, end_reason = NULL
    WHERE j.id = (
        SELECT c.id FROM coding_jobs c
        WHERE c.status = 'pending' AND c.run_at <= queue_now()
        ORDER BY c.priority DESC, c.created_at, c.seq
        LIMIT 1
        FOR UPDATE SKIP LOCKED)
    -- The casts: a table made from the plan's schema has integer priorities.
    RETURNING j.id, j.session_id, j.prompt, j.lease_token, j.attempt::integer,
              j.retry_count::integer, j.max_retries::integer, j.priority::smallint;
END
$$;

-- Complete a job. With a lease token, only the attempt holding it can
-- (true also when that same attempt already completed it: a retried commit);
-- without one, an operator completes any pending or processing job.
-- Never changes a completed or failed job; false when nothing changed.
-- A completed row keeps the token of the attempt that completed it, and only
-- that one: an operator's completion clears the token, so that the retried-
-- commit answer is never given to an attempt that was reaped, released or
-- overruled (it would count a completion that it did not make).
CREATE OR REPLACE FUNCTION complete_job(job_id_param uuid, lease_token_param uuid DEFAULT NULL)
RETURNS boolean
LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = public, pg_temp AS $$
DECLARE
    ts timestamptz := queue_now();
BEGIN
    IF lease_token_param IS NULL THEN
        UPDATE coding_jobs
        SET status = 'completed', completed_at = ts, updated_at = ts, heartbeat_at = NULL,
            end_reason = 'completed', lease_token = NULL
        WHERE id = job_id_param AND status IN ('pending', 'processing');
        RETURN FOUND;
    END IF;
    UPDATE coding_jobs
    SET status = 'completed', completed_at = ts, updated_at = ts, heartbeat_at = NULL,
        end_reason = 'completed'
    WHERE id = job_id_param AND status = 'processing' AND lease_token = lease_token_param;
    RETURN FOUND OR EXISTS (SELECT 1 FROM coding_jobs
                            WHERE id = job_id_param AND lease_token = lease_token_param
                              AND status = 'completed');
END
$$;

-- Record a failed attempt: retry_count + 1, then back to pending after the
-- backoff delay, or to failed (the dead letters) when the attempts are
-- exhausted. One locked statement, so concurrent failures each count.
-- Returns true (will retry), false (dead-lettered) or NULL (nothing changed:
-- a stale lease, or a job that is already completed or failed).
CREATE OR REPLACE FUNCTION fail_job(job_id_param uuid, error_msg text,
                                    lease_token_param uuid DEFAULT NULL,
                                    reason_param text DEFAULT 'error')
RETURNS boolean
LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = public, pg_temp AS $$
DECLARE
    new_status text;
BEGIN
    UPDATE coding_jobs j
    -- least(): an operator may have lowered max_retries to retry_count; this
    -- failure is then the last one, not a CHECK violation that would also
    -- abort the reaper's whole batch.
    SET retry_count  = least(j.retry_count + 1, j.max_retries),
        status       = CASE WHEN j.retry_count + 1 >= j.max_retries THEN 'failed' ELSE 'pending' END,
        run_at       = CASE WHEN j.retry_count + 1 >= j.max_retries THEN j.run_at
                            ELSE queue_now() + queue_backoff(j.retry_count + 1) END,
        completed_at = CASE WHEN j.retry_count + 1 >= j.max_retries THEN queue_now() END,
        error_message = coalesce(error_msg, reason_param, 'error'),
        end_reason   = coalesce(reason_param, 'error'),
        heartbeat_at = NULL,
        updated_at   = queue_now()
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

-- Complete one job and claim the next in one round trip and one commit.
-- `completed` is false when the lease was lost; the claim happens either way.
CREATE OR REPLACE FUNCTION queue_complete_and_claim(job_id_param uuid, lease_token_param uuid,
                                                    worker_id_param text DEFAULT NULL)
RETURNS TABLE (completed boolean, job_id uuid, session_id uuid, prompt text, lease_token uuid,
               attempt integer, retry_count integer, max_retries integer, priority smallint)
LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = public, pg_temp AS $$
DECLARE
    ok boolean := complete_job(job_id_param, lease_token_param);
BEGIN
    RETURN QUERY SELECT ok, c.* FROM claim_next_job(worker_id_param) c;
    IF NOT FOUND THEN
        RETURN QUERY SELECT ok, NULL::uuid, NULL::uuid, NULL::text, NULL::uuid,
                            NULL::integer, NULL::integer, NULL::integer, NULL::smallint;
    END IF;
END
$$;

-- Renew the lease of a running attempt. false: the lease is lost, stop the job.
CREATE OR REPLACE FUNCTION queue_heartbeat(job_id_param uuid, lease_token_param uuid)
RETURNS boolean
LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = public, pg_temp AS $$
BEGIN
    UPDATE coding_jobs SET heartbeat_at = queue_now()
    WHERE id = job_id_param AND lease_token = lease_token_param AND status = 'processing';
    RETURN FOUND;
END
$$;

-- Give an unfinished attempt back at shutdown: pending again at once, the
-- attempt not counted as a failure, the reason kept in end_reason.
CREATE OR REPLACE FUNCTION queue_release_job(job_id_param uuid, lease_token_param uuid,
                                             reason_param text DEFAULT 'released at shutdown')
RETURNS boolean
LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = public, pg_temp AS $$
DECLARE
    released coding_jobs%ROWTYPE;
BEGIN
    UPDATE coding_jobs
    SET status = 'pending', run_at = queue_now(), heartbeat_at = NULL,
        end_reason = reason_param, updated_at = queue_now()
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

-- Requeue processing jobs whose heartbeat is older than `timeout` as failed
-- attempts ("heartbeat expired"), through fail_job and its backoff. The rows
-- are locked with SKIP LOCKED and re-checked under the lock, so several
-- reapers at once never count one attempt twice. They are then failed in
-- session order: a dead letter also locks its session (queue_fail_session),
-- and two reapers taking the same sessions in different orders deadlock.
CREATE OR REPLACE FUNCTION queue_reap_expired(timeout interval, batch_size integer DEFAULT 500)
RETURNS TABLE (job_id uuid, session_id uuid, will_retry boolean)
LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = public, pg_temp AS $$
DECLARE
    stale record;
BEGIN
    FOR stale IN
        WITH locked AS MATERIALIZED (
            SELECT c.id, c.session_id, c.lease_token FROM coding_jobs c
            WHERE c.status = 'processing' AND c.heartbeat_at < queue_now() - timeout
            ORDER BY c.heartbeat_at
            LIMIT batch_size
            FOR UPDATE SKIP LOCKED)
        SELECT l.id, l.session_id, l.lease_token FROM locked l ORDER BY l.session_id, l.id
    LOOP
        job_id := stale.id;
        session_id := stale.session_id;
        will_retry := fail_job(stale.id, 'heartbeat expired: no heartbeat for ' || timeout::text,
                               stale.lease_token, 'heartbeat_expired');
        RETURN NEXT;
    END LOOP;
END
$$;

-- Bring a dead-lettered job back: pending now, retry count reset. The last
-- error stays on the row until the next attempt ends. The session is active
-- again once none of its jobs is failed.
CREATE OR REPLACE FUNCTION queue_requeue_failed(job_id_param uuid)
RETURNS boolean
LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = public, pg_temp AS $$
DECLARE
    requeued coding_jobs%ROWTYPE;
BEGIN
    UPDATE coding_jobs
    SET status = 'pending', retry_count = 0, run_at = queue_now(), completed_at = NULL,
        end_reason = 'requeued from dead letters', updated_at = queue_now()
    WHERE id = job_id_param AND status = 'failed'
    RETURNING * INTO requeued;
    IF NOT FOUND THEN
        RETURN false;
    END IF;
    UPDATE coding_sessions s
    SET status = 'active', error_message = NULL, updated_at = queue_now()
    WHERE s.id = requeued.session_id AND s.status = 'failed'
      AND NOT EXISTS (SELECT 1 FROM coding_jobs j
                      WHERE j.session_id = s.id AND j.status = 'failed');
    PERFORM pg_notify('new_job', json_build_object('job_id', requeued.id,
        'session_id', requeued.session_id, 'priority', requeued.priority)::text);
    RETURN true;
END
$$;

-- Delete up to batch_size jobs in `status_param` (completed or failed) that
-- finished before now() - older_than. Called in a loop, one short
-- transaction per batch, so retention never holds locks for long.
CREATE OR REPLACE FUNCTION queue_prune(status_param text, older_than interval,
                                       batch_size integer DEFAULT 1000)
RETURNS integer
LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = public, pg_temp AS $$
DECLARE
    deleted integer;
BEGIN
    IF status_param NOT IN ('completed', 'failed') THEN
        RAISE EXCEPTION 'queue_prune: status must be completed or failed, got %', status_param
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    DELETE FROM coding_jobs
    WHERE id IN (SELECT c.id FROM coding_jobs c
                 WHERE c.status = status_param AND c.completed_at < queue_now() - older_than
                 ORDER BY c.completed_at
                 LIMIT batch_size
                 FOR UPDATE SKIP LOCKED);
    GET DIAGNOSTICS deleted = ROW_COUNT;
    RETURN deleted;
END
$$;

-- The plan's statistics, plus the retries waiting for their run_at.
CREATE OR REPLACE FUNCTION get_queue_stats()
RETURNS TABLE (pending_count bigint, processing_count bigint, completed_count bigint,
               failed_count bigint, oldest_pending_age interval,
               waiting_retry_count bigint, next_run_at timestamptz)
LANGUAGE sql STABLE SECURITY DEFINER SET search_path = public, pg_temp AS $$
    SELECT
        (SELECT count(*) FROM coding_jobs WHERE status = 'pending'),
        (SELECT count(*) FROM coding_jobs WHERE status = 'processing'),
        (SELECT count(*) FROM coding_jobs WHERE status = 'completed'),
        (SELECT count(*) FROM coding_jobs WHERE status = 'failed'),
        (SELECT queue_now() - min(created_at) FROM coding_jobs WHERE status = 'pending'),
        (SELECT count(*) FROM coding_jobs WHERE status = 'pending' AND run_at > queue_now()),
        (SELECT min(run_at) FROM coding_jobs WHERE status = 'pending' AND run_at > queue_now())
$$;

-- When the next pending job comes due (NULL when none is waiting): an idle
-- worker sleeps until then instead of polling.
CREATE OR REPLACE FUNCTION queue_next_run_at()
RETURNS timestamptz
LANGUAGE sql STABLE SECURITY DEFINER SET search_path = public, pg_temp AS $$
    SELECT min(run_at) FROM coding_jobs WHERE status = 'pending'
$$;

-- Mark a session failed when one of its jobs is dead-lettered, whoever did it
-- (fail_job, the reaper, or an operator's UPDATE).
CREATE OR REPLACE FUNCTION queue_fail_session() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    UPDATE coding_sessions
    SET status = 'failed', error_message = NEW.error_message, updated_at = queue_now()
    WHERE id = NEW.session_id;
    RETURN NULL;
END
$$;

DROP TRIGGER IF EXISTS on_job_dead_lettered ON coding_jobs;
CREATE TRIGGER on_job_dead_lettered
    AFTER UPDATE OF status ON coding_jobs
    FOR EACH ROW WHEN (NEW.status = 'failed' AND OLD.status IS DISTINCT FROM 'failed')
    EXECUTE FUNCTION queue_fail_session();
