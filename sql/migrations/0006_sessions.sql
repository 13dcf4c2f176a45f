-- Coding sessions: one prompt at a time per workspace, in order; cancel from the
-- phone; a double tap is one job; every attempt on record; output and progress.
-- The same rules as 0005: every function pinned to search_path = pg_catalog,
-- pg_temp, the queue's objects named public.*, our own calls exact-typed,
-- EXECUTE revoked from PUBLIC and granted per role.
--
-- THE ORDER RULE. A job may start only when fewer than its session's
-- max_concurrency unfinished (pending or processing) jobs of the session were
-- submitted (seq) before it; among the jobs that may start: priority, then seq.
-- Every pending job says why it cannot start yet, in waiting_for:
--   NULL       it may start once due: the only jobs in the claim's index
--   'session'  max_concurrency earlier unfinished jobs of its session are ahead
--   'run_at'   a head of its session whose run_at is still in the future
-- so that a claim never walks waiting jobs: it promotes the 'run_at' heads that
-- came due (an index on run_at), then takes the first ready job. The functions
-- that change a session's unfinished set keep waiting_for true:
--   a new job is placed by a BEFORE INSERT trigger (queue_place_new_job);
--   a job that leaves the unfinished states (completed, failed, cancelled)
--   promotes the session's next jobs (queue_promote) and announces them;
--   a job that comes back (a backoff retry, a release, an operator's requeue)
--   is placed again (queue_placement); an operator's requeue or retry gives it
--   a new seq: it is submitted again, at the back of its session, so that it
--   never overtakes a job already running (the bound would not hold);
--   a change of max_concurrency places the session's pending jobs again.
--
-- LOCK ORDER (no deadlock cycle). Each of these locks the job's SESSION ROW
-- first (FOR NO KEY UPDATE: inserts and ends of one session serialize, so that
-- a promotion never misses a job being inserted), then rows of that session's
-- jobs only: the placing trigger, every end of an attempt (complete, fail,
-- release, cancel, the reaper, a dead worker's rescue), the operator's token-less
-- complete/fail, cancel_job, queue_cancel_session, queue_retry_job,
-- queue_requeue_failed, and an UPDATE of max_concurrency. None of them holds a
-- job row while it waits for a session. Job rows are otherwise locked only by:
--   the claim (pending rows, SKIP LOCKED), which waits for nothing;
--   heartbeats and renewals (processing rows): a pod's renewal and a cancel of
--   a whole session both lock several processing rows, both in id order;
--   prune and purge (finished rows, SKIP LOCKED).
-- The reaper keeps the order (each candidate's session, then the job) but
-- holds what it reaped while it goes on, across sessions: it waits only for
-- the first session of a sweep's batch, when it holds nothing yet; every
-- other session, and every job, it takes SKIP LOCKED and passes over a busy
-- one (the next batch or sweep has it), so no wait-for edge leaves it while
-- it holds anything. E.g. a pod's heartbeat holds one of its expired jobs and
-- waits for another that the reaper ended: the reaper skips the first and
-- commits.
-- So every waiter waits either for a job row whose holder waits for nothing or
-- only for rows it can get in the same order, or for a session while holding no
-- job row. The one remaining cycle is two
-- multi-row INSERTs that lock the same sessions in different orders: the
-- client inserts in session order (store.enqueue_many), and so must anyone
-- who inserts rows of several existing sessions in one statement.
--
-- The functions assume READ COMMITTED (each statement sees what committed
-- before it), as every caller of the queue uses.

-- -- schema --------------------------------------------------------------------------

ALTER TABLE public.coding_sessions
    ADD COLUMN IF NOT EXISTS max_concurrency integer NOT NULL DEFAULT 1;

ALTER TABLE public.coding_jobs
    -- a double tap is one job: unique per session (the index below)
    ADD COLUMN IF NOT EXISTS idempotency_key text,
    -- a cancel asked of a running attempt: its supervisor stops it
    ADD COLUMN IF NOT EXISTS cancel_requested_at timestamptz,
    -- the end of the command's stdout, or a Python handler's returned value
    ADD COLUMN IF NOT EXISTS output text,
    -- why a pending job cannot start yet (see above); NULL on every other row
    ADD COLUMN IF NOT EXISTS waiting_for text;

ALTER TABLE public.coding_jobs DROP CONSTRAINT IF EXISTS coding_jobs_status_check;
ALTER TABLE public.coding_jobs ADD CONSTRAINT coding_jobs_status_check
    CHECK (status IN ('pending', 'processing', 'completed', 'failed', 'cancelled'));

DO $$
DECLARE
    c record;
BEGIN
    FOR c IN SELECT * FROM (VALUES
        ('public.coding_sessions'::regclass, 'coding_sessions_max_concurrency_check',
         $c$CHECK (max_concurrency BETWEEN 1 AND 100)$c$),
        ('public.coding_jobs'::regclass, 'coding_jobs_idempotency_key_check',
         $c$CHECK (char_length(idempotency_key) BETWEEN 1 AND 200)$c$),
        ('public.coding_jobs'::regclass, 'coding_jobs_output_check',
         $c$CHECK (octet_length(output) <= 65536)$c$),
        ('public.coding_jobs'::regclass, 'coding_jobs_waiting_for_check',
         $c$CHECK (waiting_for IN ('session', 'run_at')
                 AND status = 'pending' OR waiting_for IS NULL)$c$)
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

CREATE UNIQUE INDEX IF NOT EXISTS coding_jobs_idempotency_idx
    ON public.coding_jobs (session_id, idempotency_key) WHERE idempotency_key IS NOT NULL;

-- The claim walks only the jobs that may start: its cost does not grow with
-- the jobs that wait for their session or their backoff.
DROP INDEX IF EXISTS public.coding_jobs_claim_idx;
CREATE INDEX IF NOT EXISTS coding_jobs_ready_idx
    ON public.coding_jobs (priority DESC, seq) WHERE status = 'pending' AND waiting_for IS NULL;
-- The heads waiting for their run_at, earliest first: the claim's probe.
CREATE INDEX IF NOT EXISTS coding_jobs_run_at_idx
    ON public.coding_jobs (run_at) WHERE status = 'pending' AND waiting_for = 'run_at';
-- A session's unfinished jobs in submission order: placing and promoting read
-- at most max_concurrency of them. status is included for the statistics'
-- count of pending jobs (an index-only scan). heartbeat_at stays out of every
-- index: heartbeats remain HOT updates.
CREATE INDEX IF NOT EXISTS coding_jobs_unfinished_idx
    ON public.coding_jobs (session_id, seq) INCLUDE (status)
    WHERE status IN ('pending', 'processing');
-- Retention of cancelled jobs.
CREATE INDEX IF NOT EXISTS coding_jobs_cancelled_idx
    ON public.coding_jobs (completed_at) WHERE status = 'cancelled';

-- A row per claim, closed however the attempt ends; pruned with its job.
CREATE TABLE IF NOT EXISTS public.coding_job_attempts (
    job_id        uuid NOT NULL REFERENCES public.coding_jobs (id) ON DELETE CASCADE,
    attempt       integer NOT NULL,
    worker_id     text,
    started_at    timestamptz NOT NULL,
    ended_at      timestamptz,
    end_reason    text,
    error_message text,
    PRIMARY KEY (job_id, attempt)
);

-- What a running attempt reports (the command's lines on fd 3), for the phone.
CREATE TABLE IF NOT EXISTS public.coding_job_events (
    id         bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    job_id     uuid NOT NULL REFERENCES public.coding_jobs (id) ON DELETE CASCADE,
    session_id uuid NOT NULL,
    attempt    integer NOT NULL,
    kind       text NOT NULL CHECK (char_length(kind) BETWEEN 1 AND 100),
    payload    jsonb NOT NULL CHECK (jsonb_typeof(payload) = 'object'
                                     AND octet_length(payload::text) <= 65536),
    created_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX IF NOT EXISTS coding_job_events_job_idx ON public.coding_job_events (job_id, id);
CREATE INDEX IF NOT EXISTS coding_job_events_session_idx
    ON public.coding_job_events (session_id, id);

-- Place the jobs already queued: the first max_concurrency unfinished jobs of
-- each session may start, the others wait for it.
WITH ranked AS (
    SELECT j.id, j.run_at, s.max_concurrency,
           pg_catalog.row_number() OVER (PARTITION BY j.session_id ORDER BY j.seq) AS n
    FROM public.coding_jobs j JOIN public.coding_sessions s ON s.id = j.session_id
    WHERE j.status IN ('pending', 'processing'))
UPDATE public.coding_jobs j
SET waiting_for = CASE WHEN r.n > r.max_concurrency THEN 'session'
                       WHEN r.run_at > pg_catalog.now() THEN 'run_at' END
FROM ranked r
WHERE j.id = r.id AND j.status = 'pending'
  AND (r.n > r.max_concurrency OR r.run_at > pg_catalog.now());

-- -- placing and promoting ---------------------------------------------------------------

-- Where a pending job of the session stands: 'session' when max_concurrency
-- unfinished jobs submitted before it (seq) are ahead, else 'run_at' until it is
-- due, else NULL. Reads at most max_concurrency index entries.
CREATE FUNCTION public.queue_placement(session_id_param uuid, seq_param bigint,
                                       run_at_param timestamptz, max_concurrency_param integer,
                                       now_param timestamptz)
RETURNS text
LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    ahead bigint;
BEGIN
    SELECT count(*) INTO ahead
    FROM (SELECT 1 FROM public.coding_jobs o
          WHERE o.session_id = session_id_param AND o.status IN ('pending', 'processing')
            AND o.seq < seq_param
          LIMIT max_concurrency_param) a;
    IF ahead >= max_concurrency_param THEN
        RETURN 'session';
    END IF;
    RETURN CASE WHEN run_at_param > now_param THEN 'run_at' END;
END
$$;

-- After a job of the session left the unfinished states: the first
-- max_concurrency unfinished jobs that wait for the session may start (or wait
-- for their run_at); each that is due is announced on new_job, so that the end
-- of a prompt wakes a worker for the next. The caller holds the session's lock.
CREATE FUNCTION public.queue_promote(session_id_param uuid, max_concurrency_param integer,
                                     now_param timestamptz)
RETURNS integer
LANGUAGE plpgsql VOLATILE SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    announced integer;
BEGIN
    WITH heads AS (
        SELECT o.id FROM public.coding_jobs o
        WHERE o.session_id = session_id_param AND o.status IN ('pending', 'processing')
        ORDER BY o.seq
        LIMIT max_concurrency_param),
    promoted AS (
        UPDATE public.coding_jobs j
        SET waiting_for = CASE WHEN j.run_at > now_param THEN 'run_at' END
        FROM heads h
        WHERE j.id = h.id AND j.status = 'pending' AND j.waiting_for = 'session'
        RETURNING j.id, j.session_id, j.priority, j.waiting_for)
    SELECT count(pg_notify('new_job', json_build_object(
               'job_id', p.id, 'session_id', p.session_id, 'priority', p.priority)::text))
    INTO announced
    FROM promoted p WHERE p.waiting_for IS NULL;
    RETURN announced;
END
$$;

-- A new job takes its place behind the session's unfinished jobs; whatever the
-- INSERT gave waiting_for is overwritten. The session's row is locked first
-- (the lock order above), unless this transaction created or updated it: a row
-- whose xmin is ours is invisible to others or already locked by us. SECURITY
-- DEFINER: a producer may not lock sessions itself.
CREATE OR REPLACE FUNCTION public.queue_place_new_job() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    mc integer;
    ours boolean;
    ahead bigint;
    overtaken boolean;
BEGIN
    NEW.waiting_for := NULL;
    IF NEW.status IS DISTINCT FROM 'pending' THEN
        RETURN NEW;  -- refused by queue_accept_new_jobs, with the reason
    END IF;
    -- One statement in the usual case, a session of an earlier transaction.
    SELECT s.max_concurrency INTO mc
    FROM public.coding_sessions s
    WHERE s.id = NEW.session_id
      AND s.xmin IS DISTINCT FROM pg_current_xact_id_if_assigned()::xid
    FOR NO KEY UPDATE;
    ours := NOT FOUND;
    IF ours THEN
        SELECT s.max_concurrency INTO mc FROM public.coding_sessions s WHERE s.id = NEW.session_id;
        IF NOT FOUND THEN
            RETURN NEW;  -- no such session: the foreign key refuses the row
        END IF;
    END IF;
    -- The session's last unfinished jobs, at most max_concurrency of them: how
    -- many are ahead, and whether one holds a higher seq than ours. Ours was
    -- drawn before we had the lock, so a job inserted (or requeued) by a
    -- transaction that took the lock first may: submission order is the lock's
    -- order, so we draw again.
    SELECT count(*), coalesce(bool_or(a.seq > NEW.seq), false) INTO ahead, overtaken
    FROM (SELECT o.seq FROM public.coding_jobs o
          WHERE o.session_id = NEW.session_id AND o.status IN ('pending', 'processing')
          ORDER BY o.seq DESC
          LIMIT mc) a;
    IF overtaken THEN
        NEW.seq := nextval(pg_get_serial_sequence('public.coding_jobs', 'seq')::regclass);
    END IF;
    NEW.waiting_for := CASE WHEN ahead >= mc THEN 'session'
                            WHEN NEW.run_at > public.queue_now() THEN 'run_at' END;
    RETURN NEW;
END
$$;

DROP TRIGGER IF EXISTS on_job_submitted ON public.coding_jobs;
CREATE TRIGGER on_job_submitted
    BEFORE INSERT ON public.coding_jobs
    FOR EACH ROW EXECUTE FUNCTION public.queue_place_new_job();

-- A change of max_concurrency places the session's pending jobs again (the
-- UPDATE holds the session's row: the lock order holds). Jobs that may start
-- now are announced.
CREATE OR REPLACE FUNCTION public.queue_replace_session_jobs() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    ts timestamptz := public.queue_now();
    announced integer;
BEGIN
    WITH ranked AS (
        SELECT o.id, CASE WHEN pg_catalog.row_number() OVER (ORDER BY o.seq)
                               > NEW.max_concurrency THEN 'session'
                          WHEN o.run_at > ts THEN 'run_at' END AS placed
        FROM public.coding_jobs o
        WHERE o.session_id = NEW.id AND o.status IN ('pending', 'processing')),
    placed AS (
        UPDATE public.coding_jobs j SET waiting_for = r.placed
        FROM ranked r
        WHERE j.id = r.id AND j.status = 'pending' AND j.waiting_for IS DISTINCT FROM r.placed
        RETURNING j.id, j.session_id, j.priority, j.waiting_for)
    SELECT count(pg_notify('new_job', json_build_object(
               'job_id', p.id, 'session_id', p.session_id, 'priority', p.priority)::text))
    INTO announced
    FROM placed p WHERE p.waiting_for IS NULL;
    RETURN NULL;
END
$$;

DROP TRIGGER IF EXISTS on_session_concurrency_changed ON public.coding_sessions;
CREATE TRIGGER on_session_concurrency_changed
    AFTER UPDATE OF max_concurrency ON public.coding_sessions
    FOR EACH ROW WHEN (OLD.max_concurrency IS DISTINCT FROM NEW.max_concurrency)
    EXECUTE FUNCTION public.queue_replace_session_jobs();

-- -- ending an attempt ---------------------------------------------------------------------

-- The output kept with a job: its last 65536 bytes (the end is what matters).
CREATE FUNCTION public.queue_output_tail(output_param text) RETURNS text
LANGUAGE plpgsql IMMUTABLE STRICT SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    tail text := output_param;
BEGIN
    IF octet_length(tail) <= 65536 THEN
        RETURN tail;
    END IF;
    tail := "right"(tail, 65536);
    -- Each character is 1 to 4 bytes: dropping a quarter of the excess in
    -- characters converges in a few steps, never cutting one in half.
    WHILE octet_length(tail) > 65536 LOOP
        tail := "right"(tail, char_length(tail) - (octet_length(tail) - 65536 + 3) / 4);
    END LOOP;
    RETURN tail;
END
$$;

-- The one body of every end of an attempt, and of the operator's token-less
-- complete and fail. kind_param: 'complete', 'release', 'cancel' or 'fail'
-- (reason_param says which failure). With a lease: only the attempt holding it
-- (status processing); with NULL: any pending or processing job (the operator).
-- expired_before: the reaper's condition, re-checked under the lock. Returns
-- the job's new status, NULL when nothing changed. Executable by the owner
-- alone: the entry points decide who may take which path.
CREATE FUNCTION public.queue_finish(job_id_param uuid, lease_token_param uuid, kind_param text,
                                    reason_param text, error_param text, output_param text,
                                    expired_before timestamptz)
RETURNS text
LANGUAGE plpgsql VOLATILE SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    ts timestamptz := public.queue_now();
    cur record;
    mc integer;
    locked_session uuid;
    open_job boolean;
    new_status text;
    counted boolean;
    new_run_at timestamptz;
    placed text;
BEGIN
    LOOP
        SELECT j.session_id, j.status, j.lease_token, j.attempt, j.retry_count, j.max_retries,
               j.cancel_requested_at, j.seq, j.run_at, j.heartbeat_at, j.priority
        INTO cur FROM public.coding_jobs j WHERE j.id = job_id_param;
        IF NOT FOUND THEN
            RETURN NULL;
        END IF;
        IF lease_token_param IS NULL THEN
            open_job := cur.status IN ('pending', 'processing');
        ELSE
            open_job := coalesce(cur.status = 'processing' AND cur.lease_token = lease_token_param
                                 AND (expired_before IS NULL
                                      OR cur.heartbeat_at < expired_before), false);
        END IF;
        IF NOT open_job THEN
            RETURN NULL;
        END IF;
        IF locked_session IS NULL THEN
            -- The session first (the lock order in the header), then the job.
            SELECT s.id, s.max_concurrency INTO locked_session, mc
            FROM public.coding_sessions s WHERE s.id = cur.session_id FOR NO KEY UPDATE;
            IF NOT FOUND THEN
                RETURN NULL;
            END IF;
        END IF;

        new_status := CASE
            WHEN kind_param = 'complete' THEN 'completed'
            WHEN kind_param = 'cancel' OR cur.cancel_requested_at IS NOT NULL THEN 'cancelled'
            WHEN kind_param = 'release' THEN 'pending'
            WHEN cur.retry_count + 1 >= cur.max_retries THEN 'failed'
            ELSE 'pending' END;
        counted := kind_param = 'fail' AND new_status IN ('pending', 'failed');
        new_run_at := CASE WHEN new_status <> 'pending' THEN cur.run_at
                           WHEN kind_param = 'release' THEN ts
                           ELSE ts + public.queue_backoff((cur.retry_count + 1)::integer) END;
        placed := CASE WHEN new_status = 'pending' THEN
                      public.queue_placement(cur.session_id, cur.seq, new_run_at, mc, ts) END;

        -- The row was read before the session's lock was ours: the guard sees
        -- any change since (an end, a cancel, a claim of a pending job, a
        -- heartbeat for the reaper), and we read again, under the lock.
        UPDATE public.coding_jobs j
        SET status = new_status,
            retry_count = CASE WHEN counted THEN least(j.retry_count + 1, j.max_retries)
                               ELSE j.retry_count END,
            run_at = new_run_at,
            waiting_for = placed,
            completed_at = CASE WHEN new_status = 'pending' THEN NULL ELSE ts END,
            heartbeat_at = NULL,
            end_reason = CASE WHEN new_status = 'cancelled' THEN 'cancelled'
                              WHEN kind_param = 'complete' THEN 'completed'
                              WHEN kind_param = 'release' THEN coalesce(error_param, 'released')
                              ELSE coalesce(reason_param, 'error') END,
            error_message = CASE WHEN counted THEN coalesce(error_param, reason_param, 'error')
                                 WHEN new_status = 'cancelled'
                                     THEN coalesce(error_param, j.error_message)
                                 ELSE j.error_message END,
            -- an operator's completion leaves no lease: the retried-commit
            -- answer of complete_job is never given to an overruled attempt
            lease_token = CASE WHEN lease_token_param IS NULL AND new_status = 'completed'
                               THEN NULL ELSE j.lease_token END,
            output = coalesce(public.queue_output_tail(output_param), j.output),
            updated_at = ts
        WHERE j.id = job_id_param AND j.status = cur.status
          AND j.lease_token IS NOT DISTINCT FROM cur.lease_token AND j.attempt = cur.attempt
          AND j.retry_count = cur.retry_count
          AND j.cancel_requested_at IS NOT DISTINCT FROM cur.cancel_requested_at
          AND (expired_before IS NULL OR j.heartbeat_at < expired_before);
        EXIT WHEN FOUND;
    END LOOP;

    IF cur.status = 'processing' THEN
        UPDATE public.coding_job_attempts a
        SET ended_at = ts,
            end_reason = CASE kind_param WHEN 'complete' THEN 'completed'
                                         WHEN 'release' THEN 'released'
                                         WHEN 'cancel' THEN 'cancelled'
                                         ELSE coalesce(reason_param, 'error') END,
            error_message = CASE WHEN lease_token_param IS NULL AND kind_param = 'complete'
                                     THEN 'completed by an operator'
                                 WHEN kind_param = 'fail' THEN coalesce(error_param, reason_param)
                                 ELSE error_param END
        WHERE a.job_id = job_id_param AND a.attempt = cur.attempt AND a.ended_at IS NULL;
    END IF;

    IF new_status <> 'pending' THEN
        PERFORM public.queue_promote(cur.session_id, mc, ts);
    ELSIF kind_param = 'release' AND placed IS NULL THEN
        PERFORM pg_notify('new_job', json_build_object(
            'job_id', job_id_param, 'session_id', cur.session_id, 'priority', cur.priority)::text);
    END IF;
    RETURN new_status;
END
$$;

-- queue_finish replaces 0005's body of every failure, which knew no session.
DROP FUNCTION IF EXISTS public.queue_record_failure(uuid, text, uuid, text);

-- -- the plan's functions -----------------------------------------------------------

-- The worker's overloads gain the output; overloads with defaults cannot
-- change in place. get_queue_stats gains a column; queue_reap_expired too.
DROP FUNCTION IF EXISTS public.complete_job(uuid, uuid);
DROP FUNCTION IF EXISTS public.fail_job(uuid, text, uuid, text);
DROP FUNCTION IF EXISTS public.get_queue_stats();
DROP FUNCTION IF EXISTS public.queue_reap_expired(integer);

-- Promote the heads that came due (a cheap probe first; SKIP LOCKED: another
-- claimer promoting them is as good), then take the first ready due job by
-- priority, then submission order, and record the attempt.
CREATE OR REPLACE FUNCTION public.claim_next_job(worker_id_param text DEFAULT NULL)
RETURNS TABLE (job_id uuid, session_id uuid, prompt text, lease_token uuid,
               attempt integer, retry_count integer, max_retries integer, priority smallint)
LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
#variable_conflict use_column
DECLARE
    ts timestamptz := public.queue_now();
BEGIN
    IF EXISTS (SELECT 1 FROM public.coding_jobs c
               WHERE c.status = 'pending' AND c.waiting_for = 'run_at' AND c.run_at <= ts) THEN
        -- At most a thousand at a time: one claim never carries a whole wave
        -- of retries; the next claims promote the rest.
        UPDATE public.coding_jobs j SET waiting_for = NULL
        WHERE j.id IN (SELECT c.id FROM public.coding_jobs c
                       WHERE c.status = 'pending' AND c.waiting_for = 'run_at' AND c.run_at <= ts
                       ORDER BY c.run_at
                       LIMIT 1000
                       FOR UPDATE SKIP LOCKED);
    END IF;
    RETURN QUERY
    WITH claimed AS (
        UPDATE public.coding_jobs j
        SET status = 'processing', started_at = ts, updated_at = ts, heartbeat_at = ts,
            worker_id = worker_id_param, lease_token = gen_random_uuid(),
            attempt = j.attempt + 1, end_reason = NULL
        WHERE j.id = (
            SELECT c.id FROM public.coding_jobs c
            WHERE c.status = 'pending' AND c.waiting_for IS NULL AND c.run_at <= ts
            ORDER BY c.priority DESC, c.seq
            LIMIT 1
            FOR UPDATE SKIP LOCKED)
        RETURNING j.id, j.session_id, j.prompt, j.lease_token, j.attempt, j.retry_count,
                  j.max_retries, j.priority),
    recorded AS (
        INSERT INTO public.coding_job_attempts (job_id, attempt, worker_id, started_at)
        SELECT c.id, c.attempt, worker_id_param, ts FROM claimed c)
    -- The casts: a table made from the plan's schema has integer priorities.
    SELECT c.id, c.session_id, c.prompt, c.lease_token, c.attempt::integer,
           c.retry_count::integer, c.max_retries::integer, c.priority::smallint
    FROM claimed c;
END
$$;

-- The worker's completion: only the attempt holding the lease (true also when
-- that same attempt already completed it: a retried commit). A NULL lease
-- completes nothing. Completed also when a cancel was requested: the work is done.
CREATE FUNCTION public.complete_job(job_id_param uuid, lease_token_param uuid,
                                    output_param text DEFAULT NULL)
RETURNS boolean
LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    IF lease_token_param IS NULL THEN
        RETURN false;
    END IF;
    IF public.queue_finish(job_id_param, lease_token_param, 'complete'::text, 'completed'::text,
                           NULL::text, output_param, NULL::timestamptz) IS NOT NULL THEN
        RETURN true;
    END IF;
    RETURN EXISTS (SELECT 1 FROM public.coding_jobs
                   WHERE id = job_id_param AND lease_token = lease_token_param
                     AND status = 'completed');
END
$$;

-- The plan's call, the operator's path: completes any pending or processing
-- job (closing its open attempt), never a finished one.
CREATE OR REPLACE FUNCTION public.complete_job(job_id_param uuid)
RETURNS boolean
LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    RETURN public.queue_finish(job_id_param, NULL::uuid, 'complete'::text, 'completed'::text,
                               NULL::text, NULL::text, NULL::timestamptz) IS NOT NULL;
END
$$;

-- The worker's failure: true will retry, false not retried (dead-lettered, or
-- cancelled because a cancel was requested), NULL nothing changed (a stale or
-- NULL lease, a finished job).
CREATE FUNCTION public.fail_job(job_id_param uuid, error_msg text, lease_token_param uuid,
                                reason_param text DEFAULT 'error', output_param text DEFAULT NULL)
RETURNS boolean
LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    outcome text;
BEGIN
    IF lease_token_param IS NULL THEN
        RETURN NULL;
    END IF;
    outcome := public.queue_finish(job_id_param, lease_token_param, 'fail'::text,
                                   coalesce(reason_param, 'error'), error_msg, output_param,
                                   NULL::timestamptz);
    RETURN CASE WHEN outcome IS NULL THEN NULL ELSE outcome = 'pending' END;
END
$$;

-- The plan's call, the operator's path: a failure of any pending or processing
-- job, atomically, so that concurrent failures each count.
CREATE OR REPLACE FUNCTION public.fail_job(job_id_param uuid, error_msg text)
RETURNS boolean
LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    outcome text;
BEGIN
    outcome := public.queue_finish(job_id_param, NULL::uuid, 'fail'::text, 'error'::text,
                                   error_msg, NULL::text, NULL::timestamptz);
    RETURN CASE WHEN outcome IS NULL THEN NULL ELSE outcome = 'pending' END;
END
$$;

CREATE FUNCTION public.get_queue_stats()
RETURNS TABLE (pending_count bigint, processing_count bigint, completed_count bigint,
               failed_count bigint, oldest_pending_age interval,
               waiting_retry_count bigint, next_run_at timestamptz, cancelled_count bigint)
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
         WHERE status = 'pending' AND run_at > public.queue_now()),
        (SELECT count(*) FROM public.coding_jobs WHERE status = 'cancelled')
$$;

-- -- the worker's functions -------------------------------------------------------------

-- End the attempt holding the lease; the job's new status, NULL when nothing
-- changed. end_reason_param: 'completed', 'released' (given back, not counted;
-- error_param is the human reason), 'cancelled', or a failure's reason (error,
-- deadline_exceeded, worker_exited, heartbeat_expired, lease_lost, ...). A
-- requested cancel turns a release or a failure into 'cancelled'.
CREATE FUNCTION public.queue_end_attempt(job_id_param uuid, lease_token_param uuid,
                                         end_reason_param text, error_param text DEFAULT NULL,
                                         output_param text DEFAULT NULL)
RETURNS text
LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    IF end_reason_param IS NULL OR end_reason_param = '' THEN
        RAISE EXCEPTION 'queue_end_attempt: an end reason is required'
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF lease_token_param IS NULL THEN
        RETURN NULL;
    END IF;
    RETURN public.queue_finish(
        job_id_param, lease_token_param,
        CASE end_reason_param WHEN 'completed' THEN 'complete' WHEN 'released' THEN 'release'
                              WHEN 'cancelled' THEN 'cancel' ELSE 'fail' END,
        end_reason_param, error_param, output_param, NULL::timestamptz);
END
$$;

-- queue_end_attempt, then claim_next_job, in one round trip and one commit.
-- Always one row; the claim's columns are NULL when nothing was claimed.
CREATE FUNCTION public.queue_end_and_claim(job_id_param uuid, lease_token_param uuid,
                                           end_reason_param text, error_param text,
                                           output_param text, worker_id_param text)
RETURNS TABLE (ended text, job_id uuid, session_id uuid, prompt text, lease_token uuid,
               attempt integer, retry_count integer, max_retries integer, priority smallint)
LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    outcome text := public.queue_end_attempt(job_id_param, lease_token_param, end_reason_param,
                                             error_param, output_param);
BEGIN
    RETURN QUERY SELECT outcome, c.* FROM public.claim_next_job(worker_id_param) c;
    IF NOT FOUND THEN
        RETURN QUERY SELECT outcome, NULL::uuid, NULL::uuid, NULL::text, NULL::uuid,
                            NULL::integer, NULL::integer, NULL::integer, NULL::smallint;
    END IF;
END
$$;

CREATE OR REPLACE FUNCTION public.queue_complete_and_claim(job_id_param uuid, lease_token_param uuid,
                                                           worker_id_param text DEFAULT NULL)
RETURNS TABLE (completed boolean, job_id uuid, session_id uuid, prompt text, lease_token uuid,
               attempt integer, retry_count integer, max_retries integer, priority smallint)
LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    ok boolean := public.complete_job(job_id_param, lease_token_param, NULL::text);
BEGIN
    RETURN QUERY SELECT ok, c.* FROM public.claim_next_job(worker_id_param) c;
    IF NOT FOUND THEN
        RETURN QUERY SELECT ok, NULL::uuid, NULL::uuid, NULL::text, NULL::uuid,
                            NULL::integer, NULL::integer, NULL::integer, NULL::smallint;
    END IF;
END
$$;

CREATE OR REPLACE FUNCTION public.queue_release_job(job_id_param uuid, lease_token_param uuid,
                                                    reason_param text DEFAULT 'released at shutdown')
RETURNS boolean
LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    IF lease_token_param IS NULL THEN
        RETURN false;
    END IF;
    RETURN public.queue_finish(job_id_param, lease_token_param, 'release'::text,
                               'released'::text, reason_param, NULL::text,
                               NULL::timestamptz) IS NOT NULL;
END
$$;

-- The pod's heartbeat: one UPDATE renews every running attempt of the pod,
-- each fenced by its own lease. A row per input job: renewed false means the
-- lease is lost (stop the attempt); cancel_requested true means stop it and
-- record 'cancelled'.
CREATE FUNCTION public.queue_renew_leases(job_ids uuid[], lease_tokens uuid[])
RETURNS TABLE (job_id uuid, renewed boolean, cancel_requested boolean)
LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
#variable_conflict use_column
DECLARE
    ts timestamptz := public.queue_now();
BEGIN
    IF cardinality(job_ids) IS DISTINCT FROM cardinality(lease_tokens) THEN
        RAISE EXCEPTION 'queue_renew_leases: % job ids but % lease tokens',
            cardinality(job_ids), cardinality(lease_tokens)
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    RETURN QUERY
    WITH wanted AS (
        SELECT w.id, w.token, w.n
        FROM unnest(job_ids, lease_tokens) WITH ORDINALITY AS w (id, token, n)),
    -- in id order, as queue_cancel_session: the two never lock in crossed orders
    held AS (
        SELECT j.id FROM public.coding_jobs j JOIN wanted w ON w.id = j.id
        WHERE j.lease_token = w.token AND j.status = 'processing'
        ORDER BY j.id
        FOR NO KEY UPDATE OF j),
    touched AS (
        UPDATE public.coding_jobs j SET heartbeat_at = ts
        FROM held h
        WHERE j.id = h.id
        RETURNING j.id, j.lease_token, j.cancel_requested_at)
    SELECT w.id, r.id IS NOT NULL, coalesce(r.cancel_requested_at IS NOT NULL, false)
    FROM wanted w LEFT JOIN touched r ON r.id = w.id AND r.lease_token = w.token
    ORDER BY w.n;
END
$$;

-- Progress events of the attempt holding the lease, in order; each announced
-- on job_progress (ids and the kind only: the phone reads the row). 0 and
-- nothing written when the lease is stale.
CREATE FUNCTION public.queue_add_events(job_id_param uuid, lease_token_param uuid,
                                        kinds text[], payloads jsonb[])
RETURNS integer
LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    holder record;
    added integer;
BEGIN
    IF cardinality(kinds) IS DISTINCT FROM cardinality(payloads) THEN
        RAISE EXCEPTION 'queue_add_events: % kinds but % payloads',
            cardinality(kinds), cardinality(payloads)
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    SELECT j.session_id, j.attempt INTO holder
    FROM public.coding_jobs j
    WHERE j.id = job_id_param AND j.lease_token = lease_token_param AND j.status = 'processing';
    IF NOT FOUND OR cardinality(kinds) = 0 THEN
        RETURN 0;
    END IF;
    WITH inserted AS (
        INSERT INTO public.coding_job_events (job_id, session_id, attempt, kind, payload)
        SELECT job_id_param, holder.session_id, holder.attempt, e.kind, e.payload
        FROM unnest(kinds, payloads) WITH ORDINALITY AS e (kind, payload, n)
        ORDER BY e.n
        RETURNING id, kind)
    SELECT count(pg_notify('job_progress', json_build_object(
               'job_id', job_id_param, 'session_id', holder.session_id,
               'event_id', i.id, 'kind', i.kind)::text))
    INTO added
    FROM (SELECT * FROM inserted ORDER BY id) i;
    RETURN added;
END
$$;

-- Requeue, as failed attempts, processing jobs silent for longer than the
-- heartbeat timeout that operators configured: whoever calls, no live attempt
-- is expired early. The oldest candidates are read, in session order; each
-- session, then each job, is locked and re-checked under the lock, so that two
-- reapers never count one attempt twice. The first session is waited for (the
-- reaper holds nothing yet: a concurrent reaper that took it is then waited
-- out, not raced), the others and the jobs are taken SKIP LOCKED (see the
-- header). A row per candidate: will_retry and new_status NULL when it was
-- passed over (busy, or ended or renewed meanwhile). An attempt whose cancel
-- was requested ends cancelled.
CREATE FUNCTION public.queue_reap_expired(batch_size integer DEFAULT 500)
RETURNS TABLE (job_id uuid, session_id uuid, will_retry boolean, new_status text)
LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    timeout interval := (SELECT c.heartbeat_timeout FROM public.queue_config c);
    cutoff timestamptz := public.queue_now() - timeout;
    stale record;
    seen uuid;
    session_ours boolean;
BEGIN
    FOR stale IN
        SELECT o.id, o.session_id, o.lease_token
        FROM (SELECT c.id, c.session_id, c.lease_token FROM public.coding_jobs c
              WHERE c.status = 'processing' AND c.heartbeat_at < cutoff
              ORDER BY c.heartbeat_at
              LIMIT greatest(batch_size, 0)) o
        ORDER BY o.session_id, o.id
    LOOP
        job_id := stale.id;
        session_id := stale.session_id;
        will_retry := NULL;
        new_status := NULL;
        IF seen IS NULL THEN
            seen := stale.session_id;
            PERFORM 1 FROM public.coding_sessions s
            WHERE s.id = stale.session_id FOR NO KEY UPDATE;
            session_ours := FOUND;
        ELSIF seen <> stale.session_id THEN
            seen := stale.session_id;
            PERFORM 1 FROM public.coding_sessions s
            WHERE s.id = stale.session_id FOR NO KEY UPDATE SKIP LOCKED;
            session_ours := FOUND;
        END IF;
        IF session_ours THEN
            PERFORM 1 FROM public.coding_jobs c
            WHERE c.id = stale.id AND c.status = 'processing'
              AND c.lease_token = stale.lease_token AND c.heartbeat_at < cutoff
            FOR NO KEY UPDATE SKIP LOCKED;
            IF FOUND THEN
                new_status := public.queue_finish(
                    stale.id, stale.lease_token, 'fail'::text, 'heartbeat_expired'::text,
                    'heartbeat expired: no heartbeat for ' || timeout::text, NULL::text, cutoff);
                will_retry := new_status = 'pending';
            END IF;
        END IF;
        RETURN NEXT;
    END LOOP;
END
$$;

-- Delete up to batch_size finished jobs in `status_param` older than the
-- configured retention (cancelled jobs: retain_completed), with their attempts
-- and events. Called in a loop, one short transaction per batch.
CREATE OR REPLACE FUNCTION public.queue_prune(status_param text, batch_size integer DEFAULT 1000)
RETURNS integer
LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    retention interval;
    deleted integer;
BEGIN
    IF status_param IS NULL OR status_param NOT IN ('completed', 'failed', 'cancelled') THEN
        RAISE EXCEPTION 'queue_prune: status must be completed, failed or cancelled, got %',
            status_param
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    SELECT CASE status_param WHEN 'failed' THEN c.retain_failed ELSE c.retain_completed END
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

-- The earliest run_at of a job that may start or waits only for its run_at
-- (in the past when one is due now); jobs waiting for their session are left
-- out, so that an idle worker never wakes for them.
CREATE OR REPLACE FUNCTION public.queue_next_run_at()
RETURNS timestamptz
LANGUAGE sql STABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
    SELECT least(
        (SELECT min(c.run_at) FROM public.coding_jobs c
         WHERE c.status = 'pending' AND c.waiting_for IS NULL),
        (SELECT min(c.run_at) FROM public.coding_jobs c
         WHERE c.status = 'pending' AND c.waiting_for = 'run_at'))
$$;

-- -- cancelling --------------------------------------------------------------------------

-- Cancel one job of a session whose lock the caller holds: a pending job is
-- cancelled at once and frees its place; a processing one is marked and its
-- supervisor told on job_cancel. True when the job changed.
CREATE FUNCTION public.queue_cancel_locked(job_id_param uuid, session_id_param uuid,
                                           max_concurrency_param integer, now_param timestamptz)
RETURNS boolean
LANGUAGE plpgsql VOLATILE SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    UPDATE public.coding_jobs j
    SET status = 'cancelled', waiting_for = NULL, completed_at = now_param,
        updated_at = now_param, end_reason = 'cancelled'
    WHERE j.id = job_id_param AND j.status = 'pending';
    IF FOUND THEN
        PERFORM public.queue_promote(session_id_param, max_concurrency_param, now_param);
        RETURN true;
    END IF;
    -- A claim may have taken it meanwhile: the UPDATE above waited for it.
    UPDATE public.coding_jobs j
    SET cancel_requested_at = now_param, updated_at = now_param
    WHERE j.id = job_id_param AND j.status = 'processing' AND j.cancel_requested_at IS NULL;
    IF FOUND THEN
        PERFORM pg_notify('job_cancel', json_build_object(
            'job_id', job_id_param, 'session_id', session_id_param)::text);
        RETURN true;
    END IF;
    RETURN false;
END
$$;

-- Cancel a job (the phone's button): true when the call changed it; a finished
-- job, or one already being cancelled, is left alone (false).
CREATE FUNCTION public.cancel_job(job_id_param uuid)
RETURNS boolean
LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    sid uuid;
    mc integer;
BEGIN
    SELECT j.session_id INTO sid FROM public.coding_jobs j WHERE j.id = job_id_param;
    IF NOT FOUND THEN
        RETURN false;
    END IF;
    SELECT s.max_concurrency INTO mc
    FROM public.coding_sessions s WHERE s.id = sid FOR NO KEY UPDATE;
    IF NOT FOUND THEN
        RETURN false;
    END IF;
    RETURN public.queue_cancel_locked(job_id_param, sid, mc, public.queue_now());
END
$$;

-- cancel_job on every unfinished job of the session; how many changed. The
-- pending ones at once (none is left to promote), then the processing ones in
-- id order (the order of a pod's queue_renew_leases: no crossed waits).
CREATE FUNCTION public.queue_cancel_session(session_id_param uuid)
RETURNS integer
LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    ts timestamptz := public.queue_now();
    cancelled integer;
    asked integer;
BEGIN
    PERFORM 1 FROM public.coding_sessions s WHERE s.id = session_id_param FOR NO KEY UPDATE;
    IF NOT FOUND THEN
        RETURN 0;
    END IF;
    WITH done AS (
        UPDATE public.coding_jobs j
        SET status = 'cancelled', waiting_for = NULL, completed_at = ts, updated_at = ts,
            end_reason = 'cancelled'
        WHERE j.session_id = session_id_param AND j.status = 'pending'
        RETURNING j.id)
    SELECT count(*) INTO cancelled FROM done;
    -- A claim may have taken a pending one meanwhile: this statement sees it.
    WITH held AS (
        SELECT j.id FROM public.coding_jobs j
        WHERE j.session_id = session_id_param AND j.status = 'processing'
          AND j.cancel_requested_at IS NULL
        ORDER BY j.id
        FOR NO KEY UPDATE),
    marked AS (
        UPDATE public.coding_jobs j SET cancel_requested_at = ts, updated_at = ts
        FROM held h WHERE j.id = h.id
        RETURNING j.id)
    SELECT count(pg_notify('job_cancel', json_build_object(
               'job_id', m.id, 'session_id', session_id_param)::text))
    INTO asked
    FROM marked m;
    RETURN cancelled + asked;
END
$$;

-- -- the operator's functions --------------------------------------------------------------

-- Submit a finished job again, deliberately: pending, due now, retry count
-- reset, any cancel forgotten, a new seq (the back of its session), placed.
-- The session is active again once none of its jobs is failed.
CREATE FUNCTION public.queue_requeue(job_id_param uuid, statuses text[], reason_param text)
RETURNS boolean
LANGUAGE plpgsql VOLATILE SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    ts timestamptz := public.queue_now();
    sid uuid;
    mc integer;
    ahead bigint;
    requeued record;
BEGIN
    SELECT j.session_id INTO sid FROM public.coding_jobs j WHERE j.id = job_id_param;
    IF NOT FOUND THEN
        RETURN false;
    END IF;
    SELECT s.max_concurrency INTO mc
    FROM public.coding_sessions s WHERE s.id = sid FOR NO KEY UPDATE;
    -- Every unfinished job of the session is ahead of it now.
    SELECT count(*) INTO ahead
    FROM (SELECT 1 FROM public.coding_jobs o
          WHERE o.session_id = sid AND o.status IN ('pending', 'processing')
          LIMIT mc) a;
    UPDATE public.coding_jobs j
    SET status = 'pending', retry_count = 0, run_at = ts, completed_at = NULL,
        cancel_requested_at = NULL, heartbeat_at = NULL, seq = DEFAULT,
        waiting_for = CASE WHEN ahead >= mc THEN 'session' END,
        end_reason = reason_param, updated_at = ts
    WHERE j.id = job_id_param AND j.status = ANY (statuses)
    RETURNING j.id, j.session_id, j.priority, j.waiting_for INTO requeued;
    IF NOT FOUND THEN
        RETURN false;
    END IF;
    UPDATE public.coding_sessions s
    SET status = 'active', error_message = NULL, updated_at = ts
    WHERE s.id = sid AND s.status = 'failed'
      AND NOT EXISTS (SELECT 1 FROM public.coding_jobs j
                      WHERE j.session_id = s.id AND j.status = 'failed');
    IF requeued.waiting_for IS NULL THEN
        PERFORM pg_notify('new_job', json_build_object('job_id', requeued.id,
            'session_id', requeued.session_id, 'priority', requeued.priority)::text);
    END IF;
    RETURN true;
END
$$;

CREATE OR REPLACE FUNCTION public.queue_requeue_failed(job_id_param uuid)
RETURNS boolean
LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    RETURN public.queue_requeue(job_id_param, ARRAY['failed']::text[],
                                'requeued from dead letters'::text);
END
$$;

-- An operator's deliberate requeue of a failed or cancelled job.
CREATE FUNCTION public.queue_retry_job(job_id_param uuid)
RETURNS boolean
LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    RETURN public.queue_requeue(job_id_param, ARRAY['failed', 'cancelled']::text[],
                                'retried by an operator'::text);
END
$$;

-- -- the direct INSERT -------------------------------------------------------------------------

-- See 0005; a new job may also carry no cancel and no output. waiting_for is
-- the placing trigger's, not the INSERT's.
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
               WHEN n.cancel_requested_at IS NOT NULL THEN 'a cancel_requested_at'
               WHEN n.output IS NOT NULL THEN 'an output'
               WHEN n.created_at IS DISTINCT FROM now() THEN 'created_at ' || n.created_at
               WHEN n.updated_at IS DISTINCT FROM now() THEN 'updated_at ' || n.updated_at
               END || ' (job ' || n.id || ')')
    INTO announced, problem
    FROM new_jobs n;
    IF problem IS NOT NULL THEN
        RAISE EXCEPTION 'a new job must be pending with no attempt yet, got %', problem
            USING ERRCODE = 'check_violation', TABLE = 'coding_jobs',
                  CONSTRAINT = 'coding_jobs_insert_check',
                  HINT = 'insert session_id, prompt, priority, max_retries, run_at and '
                         'idempotency_key only; the queue''s functions make every other change';
    END IF;
    RETURN NULL;
END
$$;

-- -- Supabase Realtime ---------------------------------------------------------------------------

-- The phone follows a job's progress live: publish the events where the
-- publication exists (as 0003 does for coding_jobs).
DO $$
BEGIN
    IF EXISTS (SELECT 1 FROM pg_catalog.pg_publication WHERE pubname = 'supabase_realtime')
       AND NOT EXISTS (SELECT 1 FROM pg_catalog.pg_publication_tables
                       WHERE pubname = 'supabase_realtime' AND tablename = 'coding_job_events'
                         AND schemaname = 'public') THEN
        ALTER PUBLICATION supabase_realtime ADD TABLE public.coding_job_events;
    END IF;
END
$$;

-- -- privileges ----------------------------------------------------------------------------------

-- Start from nothing again (new functions are executable by PUBLIC, and
-- Supabase's default privileges give new tables and functions to its API
-- roles), then grant the whole matrix as of this migration.
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
            'public.coding_job_events, public.queue_config, public.queue_reaper_runs FROM %I',
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
        RETURN;  -- the roles could not be created (0005's notice): yours to make
    END IF;

    GRANT EXECUTE ON FUNCTION public.queue_now(), public.queue_test_clock(),
                              public.queue_settings()
        TO mobvibe_producer, mobvibe_worker, mobvibe_monitor, mobvibe_operator;

    -- mobvibe_producer: creates sessions and jobs, cancels and reads them.
    GRANT SELECT, INSERT (id, max_concurrency) ON public.coding_sessions TO mobvibe_producer;
    GRANT SELECT, INSERT (session_id, prompt, priority, max_retries, run_at, idempotency_key)
        ON public.coding_jobs TO mobvibe_producer;
    GRANT SELECT ON public.coding_job_attempts, public.coding_job_events TO mobvibe_producer;
    GRANT EXECUTE ON FUNCTION public.cancel_job(uuid), public.queue_cancel_session(uuid)
        TO mobvibe_producer;

    -- mobvibe_worker: every write wants the attempt's lease or keeps to the
    -- configured limits.
    GRANT SELECT ON public.coding_jobs, public.coding_sessions, public.queue_reaper_runs,
                    public.coding_job_attempts, public.coding_job_events
        TO mobvibe_worker;
    GRANT EXECUTE ON FUNCTION
        public.claim_next_job(text), public.complete_job(uuid, uuid, text),
        public.fail_job(uuid, text, uuid, text, text),
        public.queue_complete_and_claim(uuid, uuid, text),
        public.queue_end_attempt(uuid, uuid, text, text, text),
        public.queue_end_and_claim(uuid, uuid, text, text, text, text),
        public.queue_heartbeat(uuid, uuid), public.queue_renew_leases(uuid[], uuid[]),
        public.queue_add_events(uuid, uuid, text[], jsonb[]),
        public.queue_release_job(uuid, uuid, text),
        public.queue_claims_of_worker(text), public.queue_reap_expired(integer),
        public.queue_prune(text, integer),
        public.queue_record_reaper_run(text, bigint, bigint, bigint),
        public.get_queue_stats(), public.queue_next_run_at()
        TO mobvibe_worker;

    -- mobvibe_monitor: statistics; no prompts, no outputs, no events.
    GRANT SELECT ON public.queue_reaper_runs TO mobvibe_monitor;
    GRANT EXECUTE ON FUNCTION public.get_queue_stats(), public.queue_next_run_at()
        TO mobvibe_monitor;

    -- mobvibe_operator: the token-less plan calls, requeue and retry, purge,
    -- a session's concurrency, the configuration (not the test clock).
    GRANT EXECUTE ON FUNCTION
        public.complete_job(uuid), public.fail_job(uuid, text),
        public.queue_requeue_failed(uuid), public.queue_retry_job(uuid),
        public.queue_purge_failed(interval, integer)
        TO mobvibe_operator;
    GRANT UPDATE (max_concurrency) ON public.coding_sessions TO mobvibe_operator;
    GRANT SELECT ON public.queue_config TO mobvibe_operator;
    GRANT UPDATE (backoff_base, backoff_cap, backoff_jitter, heartbeat_timeout,
                  retain_completed, retain_failed)
        ON public.queue_config TO mobvibe_operator;
    IF pg_catalog.to_regclass('public.queue_migrations') IS NOT NULL THEN
        GRANT SELECT ON public.queue_migrations TO mobvibe_operator;
    END IF;

    IF EXISTS (SELECT 1 FROM pg_catalog.pg_roles WHERE rolname = 'service_role') THEN
        GRANT mobvibe_operator TO service_role;
    END IF;
EXCEPTION WHEN insufficient_privilege THEN
    RAISE NOTICE 'cannot grant the queue''s roles their rights: see docs/backend/JOB_QUEUE.md';
END
$$;
