-- Named queries run by the Python code. Each starts with `-- name: <name>`;
-- parameters are psycopg placeholders; no SQL is ever built from strings.

-- name: claim_next_job
SELECT job_id AS id, session_id, prompt, lease_token, attempt, retry_count, max_retries, priority
FROM claim_next_job(%(worker_id)s)

-- The attempt's own writes carry its lease; the plan's token-less calls are the
-- operator's overloads, a path of their own.
-- name: complete_job
SELECT complete_job(%(job_id)s, %(lease_token)s::uuid)

-- name: complete_job_as_operator
SELECT complete_job(%(job_id)s)

-- name: fail_job
SELECT fail_job(%(job_id)s, %(error)s, %(lease_token)s::uuid, %(reason)s)

-- name: fail_job_as_operator
SELECT fail_job(%(job_id)s, %(error)s)

-- name: heartbeat
SELECT queue_heartbeat(%(job_id)s, %(lease_token)s)

-- The attempt's end, however it ends: the job's new status (NULL: stale lease).
-- name: end_attempt
SELECT queue_end_attempt(%(job_id)s, %(lease_token)s, %(end_reason)s, %(error)s, %(output)s)

-- name: end_and_claim
SELECT ended, job_id AS id, session_id, prompt, lease_token, attempt, retry_count, max_retries,
       priority
FROM queue_end_and_claim(%(job_id)s, %(lease_token)s, %(end_reason)s, %(error)s, %(output)s,
                         %(worker_id)s)

-- A pod's heartbeat: every running attempt in one statement.
-- name: renew_leases
SELECT job_id, renewed, coalesce(cancel_requested, false) AS cancel_requested
FROM queue_renew_leases(%(job_ids)s::uuid[], %(lease_tokens)s::uuid[])

-- name: add_events
SELECT queue_add_events(%(job_id)s, %(lease_token)s, %(kinds)s::text[], %(payloads)s::jsonb[])

-- name: release_job
SELECT queue_release_job(%(job_id)s, %(lease_token)s, %(reason)s)

-- The jobs a dead worker holds, for the supervisor to give back those it never
-- started.
-- name: claims_of_worker
SELECT job_id, lease_token FROM queue_claims_of_worker(%(worker_id)s)

-- A sweep in one statement: a row per expired attempt looked at, then one row
-- (job_id NULL) with what was pruned, the limits and the retries waiting.
-- name: sweep
SELECT job_id, session_id, will_retry, new_status, pruned_completed, pruned_failed,
       pruned_cancelled, more, waiting_retries, next_retry_at, heartbeat_timeout,
       retain_completed, retain_failed
FROM queue_sweep(%(reaper)s, %(batch_size)s, %(prune_batch)s)

-- A statement timeout for the rest of this transaction only.
-- name: local_statement_timeout
SELECT set_config('statement_timeout', %(ms)s, true)

-- The reaper's report: retries waiting for their run_at. Only pending rows
-- are read (get_queue_stats would count every completed job each sweep).
-- name: waiting_retries
SELECT count(*) AS count, min(run_at) AS next_at
FROM coding_jobs WHERE status = 'pending' AND run_at > queue_now()

-- name: requeue_failed
SELECT queue_requeue_failed(%(job_id)s)

-- name: retry_job
SELECT queue_retry_job(%(job_id)s)

-- name: purge_failed
SELECT queue_purge_failed(%(older_than)s, %(batch_size)s)

-- Whether any job is still to run or running (--drain): one index entry at most,
-- where the statistics would count every finished job.
-- name: has_unfinished_jobs
SELECT EXISTS (SELECT 1 FROM coding_jobs WHERE status IN ('pending', 'processing'))

-- name: queue_stats
SELECT pending_count, processing_count, completed_count, failed_count, oldest_pending_age,
       waiting_retry_count, next_run_at, cancelled_count
FROM get_queue_stats()

-- name: next_run_at
SELECT queue_next_run_at() AS next_run_at, queue_now() AS now

-- name: create_session
INSERT INTO coding_sessions (id, max_concurrency) VALUES (%(session_id)s, %(max_concurrency)s)
ON CONFLICT (id) DO NOTHING

-- name: enqueue_job
INSERT INTO coding_jobs (session_id, prompt, priority, max_retries, run_at)
VALUES (%(session_id)s, %(prompt)s, %(priority)s, %(max_retries)s,
        coalesce(%(run_at)s, queue_now() + %(delay)s * interval '1 second'))
RETURNING id

-- A repeated key is no new job: nothing inserted, no row returned (the caller
-- reads the existing id; a concurrent twin's INSERT waits for ours, then does
-- nothing).
-- name: enqueue_job_idempotent
INSERT INTO coding_jobs (session_id, prompt, priority, max_retries, run_at, idempotency_key)
VALUES (%(session_id)s, %(prompt)s, %(priority)s, %(max_retries)s,
        coalesce(%(run_at)s, queue_now() + %(delay)s * interval '1 second'), %(idempotency_key)s)
ON CONFLICT (session_id, idempotency_key) WHERE idempotency_key IS NOT NULL DO NOTHING
RETURNING id

-- name: enqueue_jobs
INSERT INTO coding_jobs (session_id, prompt, priority, max_retries, run_at)
SELECT s, p, pr, mr, coalesce(ra, queue_now() + d * interval '1 second')
FROM unnest(%(session_ids)b::uuid[], %(prompts)b::text[], %(priorities)b::smallint[],
            %(max_retries)b::integer[], %(run_ats)s::timestamptz[], %(delays)b::float8[])
     AS t(s, p, pr, mr, ra, d)
RETURNING id

-- The inserted rows only, each with its key (NULL: no key), in insertion order.
-- name: enqueue_jobs_idempotent
INSERT INTO coding_jobs (session_id, prompt, priority, max_retries, run_at, idempotency_key)
SELECT s, p, pr, mr, coalesce(ra, queue_now() + d * interval '1 second'), k
FROM unnest(%(session_ids)b::uuid[], %(prompts)b::text[], %(priorities)b::smallint[],
            %(max_retries)b::integer[], %(run_ats)s::timestamptz[], %(delays)b::float8[],
            %(keys)s::text[])
     AS t(s, p, pr, mr, ra, d, k)
ON CONFLICT (session_id, idempotency_key) WHERE idempotency_key IS NOT NULL DO NOTHING
RETURNING id, session_id, idempotency_key

-- name: jobs_by_idempotency_key
SELECT j.session_id, j.idempotency_key, j.id
FROM coding_jobs j
JOIN unnest(%(session_ids)s::uuid[], %(keys)s::text[]) AS t(s, k)
  ON j.session_id = t.s AND j.idempotency_key = t.k

-- name: cancel_job
SELECT cancel_job(%(job_id)s)

-- name: cancel_session
SELECT queue_cancel_session(%(session_id)s)

-- The unfinished jobs of a session, each cancelled, in one statement; the
-- outcome of each. The pending ones first, latest first (cancelling them then
-- promotes nothing), then the processing ones in id order (the order in which
-- a pod's heartbeat locks them: no crossed waits).
-- name: cancel_session_jobs
SELECT t.id AS job_id, cancel_job(t.id) AS changed
FROM (SELECT id, seq, status FROM coding_jobs
      WHERE session_id = %(session_id)s AND status IN ('pending', 'processing')) t
ORDER BY t.status = 'processing', CASE WHEN t.status = 'pending' THEN t.seq END DESC, t.id

-- name: session_exists
SELECT EXISTS (SELECT 1 FROM coding_sessions WHERE id = %(session_id)s)

-- When a job whose attempt just failed runs again (its retry's backoff), for the log.
-- name: job_run_at
SELECT run_at FROM coding_jobs WHERE id = %(job_id)s AND status = 'pending'

-- name: get_job
SELECT id, session_id, prompt, priority, status, retry_count, max_retries, error_message,
       created_at, started_at, completed_at, updated_at, run_at, heartbeat_at, worker_id,
       lease_token, attempt, end_reason, idempotency_key, cancel_requested_at, output,
       waiting_for
FROM coding_jobs WHERE id = %(job_id)s

-- name: job_attempts
SELECT job_id, attempt, worker_id, started_at, ended_at, end_reason, error_message
FROM coding_job_attempts WHERE job_id = %(job_id)s ORDER BY attempt

-- name: job_events
SELECT id, job_id, session_id, attempt, kind, payload, created_at
FROM coding_job_events WHERE job_id = %(job_id)s AND id > %(after_id)s
ORDER BY id LIMIT %(limit)s

-- The job browser (mobvibe-queue jobs, the status pages): newest submission
-- first. A filter left NULL is folded away in the plan of each call.
-- name: list_jobs
SELECT id, session_id, status, priority, attempt, retry_count, max_retries, created_at,
       updated_at, run_at, completed_at, worker_id, end_reason,
       left(error_message, 200) AS error_head, waiting_for, cancel_requested_at,
       left(prompt, 80) AS prompt_head
FROM coding_jobs
WHERE (%(status)s::text IS NULL OR status = %(status)s::text)
  AND (%(session_id)s::uuid IS NULL OR session_id = %(session_id)s::uuid)
ORDER BY seq DESC
LIMIT %(limit)s

-- The jobs that ended last in one finished status (the partial index of that
-- status on completed_at).
-- name: recently_ended
SELECT id, session_id, status, priority, attempt, retry_count, max_retries, created_at,
       updated_at, run_at, completed_at, worker_id, end_reason,
       left(error_message, 200) AS error_head, waiting_for, cancel_requested_at,
       left(prompt, 80) AS prompt_head
FROM coding_jobs
WHERE status = %(status)s::text
ORDER BY completed_at DESC, seq DESC
LIMIT %(limit)s

-- What each worker runs now: the processing jobs (their partial index), by worker.
-- name: running_jobs
SELECT worker_id, id AS job_id, session_id, attempt, started_at, heartbeat_at,
       extract(epoch FROM queue_now() - heartbeat_at)::float8 AS heartbeat_age_seconds,
       cancel_requested_at, left(prompt, 80) AS prompt_head
FROM coding_jobs
WHERE status = 'processing'
ORDER BY worker_id, started_at
LIMIT %(limit)s

-- Jobs ended per minute over the last minutes, the current (partial) one
-- last, every minute present: three range scans of the partial indexes on
-- completed_at (failed attempts that will be retried are not counted: the
-- attempts table has no index on ended_at).
-- name: ended_per_minute
WITH bounds AS (
    SELECT date_trunc('minute', queue_now()) AS last,
           date_trunc('minute', queue_now()) - (%(minutes)s - 1) * interval '1 minute' AS first
), ended AS (
    -- a scalar subquery, not a join: the bound is then an index condition
    SELECT date_trunc('minute', completed_at) AS minute, 'completed' AS status
    FROM coding_jobs WHERE status = 'completed' AND completed_at >= (SELECT first FROM bounds)
    UNION ALL
    SELECT date_trunc('minute', completed_at), 'failed'
    FROM coding_jobs WHERE status = 'failed' AND completed_at >= (SELECT first FROM bounds)
    UNION ALL
    SELECT date_trunc('minute', completed_at), 'cancelled'
    FROM coding_jobs WHERE status = 'cancelled' AND completed_at >= (SELECT first FROM bounds)
)
SELECT m.minute,
       count(e.status) FILTER (WHERE e.status = 'completed') AS completed,
       count(e.status) FILTER (WHERE e.status = 'failed') AS dead_lettered,
       count(e.status) FILTER (WHERE e.status = 'cancelled') AS cancelled
FROM bounds, generate_series(bounds.first, bounds.last, interval '1 minute') AS m(minute)
LEFT JOIN ended e ON e.minute = m.minute
GROUP BY m.minute
ORDER BY m.minute

-- name: list_failed
SELECT id, session_id, priority, retry_count, max_retries, error_message, end_reason,
       completed_at, left(prompt, 80) AS prompt_head
FROM coding_jobs WHERE status = 'failed'
ORDER BY completed_at DESC, seq DESC
LIMIT %(limit)s

-- name: failed_ids
SELECT id FROM coding_jobs WHERE status = 'failed' ORDER BY completed_at, seq

-- What queue_purge_failed(older_than) would delete.
-- name: failed_ids_older_than
SELECT id FROM coding_jobs
WHERE status = 'failed' AND completed_at <= queue_now() - %(older_than)s

-- name: last_reaper_sweep
SELECT extract(epoch FROM max(last_sweep_at)) FROM queue_reaper_runs

-- The configuration every role may read, and the schema version (no tool but
-- the migration runner reads queue_migrations).
-- name: queue_settings
SELECT schema_version, heartbeat_timeout, retain_completed, retain_failed, backoff_base,
       backoff_cap, backoff_jitter
FROM queue_settings()

-- name: queue_settings_exists
SELECT to_regprocedure('queue_settings()') IS NOT NULL

-- Whether this role may read queue_migrations (operators and the owner).
-- name: migrations_readable
SELECT to_regclass('queue_migrations') IS NOT NULL
       AND has_table_privilege('queue_migrations', 'SELECT')

-- Seconds; NULL leaves a setting unchanged, and a retention of 0 keeps forever.
-- name: set_queue_config
UPDATE queue_config
SET backoff_base = coalesce(%(backoff_base)s::float8 * interval '1 second', backoff_base),
    backoff_cap = coalesce(%(backoff_cap)s::float8 * interval '1 second', backoff_cap),
    backoff_jitter = coalesce(%(backoff_jitter)s::float8, backoff_jitter),
    heartbeat_timeout = coalesce(%(heartbeat_timeout)s::float8 * interval '1 second',
                                 heartbeat_timeout),
    retain_completed = CASE WHEN %(retain_completed)s::float8 IS NULL THEN retain_completed
                            ELSE nullif(%(retain_completed)s::float8, 0) * interval '1 second' END,
    retain_failed = CASE WHEN %(retain_failed)s::float8 IS NULL THEN retain_failed
                         ELSE nullif(%(retain_failed)s::float8, 0) * interval '1 second' END

-- The migration runner runs as the owner: a pg_advisory_lock(integer) planted in
-- public would match hashtext()'s integer better than pg_catalog's bigint one,
-- hence the schema on every call (and on the doctor's implicit casts below).
-- name: migration_lock
SELECT pg_catalog.pg_advisory_lock(pg_catalog.hashtext('mobvibe-queue migrate'))

-- name: migration_unlock
SELECT pg_catalog.pg_advisory_unlock(pg_catalog.hashtext('mobvibe-queue migrate'))

-- name: create_migrations_table
CREATE TABLE IF NOT EXISTS queue_migrations (
    version    integer PRIMARY KEY,
    name       text NOT NULL,
    checksum   text NOT NULL,
    applied_at timestamptz NOT NULL DEFAULT now()
)

-- name: applied_migrations
SELECT version, name, checksum FROM queue_migrations ORDER BY version

-- A migration waits at most this long for a lock (a busy table), then fails
-- and can be run again, rather than queueing every query behind it.
-- name: migration_lock_timeout
SET LOCAL lock_timeout = '10s'

-- name: record_migration
INSERT INTO queue_migrations (version, name, checksum)
VALUES (%(version)s, %(name)s, %(checksum)s)

-- name: migrations_table_exists
SELECT to_regclass('queue_migrations') IS NOT NULL

-- The checks of `mobvibe-queue doctor`: each returns the offending rows (up to
-- the limit) with, last, how many there are in all.

-- name: doctor_processing_without_live_attempt
SELECT id AS job_id, session_id, worker_id,
       extract(epoch FROM queue_now() - heartbeat_at)::float8 AS silent_seconds,
       count(*) OVER () AS total
FROM coding_jobs
WHERE status = 'processing'
  AND (lease_token IS NULL OR heartbeat_at IS NULL OR heartbeat_at < queue_now() - %(timeout)s)
ORDER BY heartbeat_at NULLS FIRST, seq
LIMIT %(limit)s

-- name: doctor_retry_count_above_max
SELECT id AS job_id, session_id, retry_count, max_retries, count(*) OVER () AS total
FROM coding_jobs WHERE retry_count > max_retries
ORDER BY seq LIMIT %(limit)s

-- name: doctor_failed_without_reason
SELECT id AS job_id, session_id, count(*) OVER () AS total
FROM coding_jobs WHERE status = 'failed' AND coalesce(btrim(error_message), '') = ''
ORDER BY seq LIMIT %(limit)s

-- A failed session whose jobs are all gone (retention) is fine: only
-- sessions that still have jobs are checked.
-- name: doctor_failed_session_without_failed_job
SELECT s.id AS session_id, count(*) OVER () AS total
FROM coding_sessions s
WHERE s.status = 'failed'
  AND EXISTS (SELECT 1 FROM coding_jobs j WHERE j.session_id = s.id)
  AND NOT EXISTS (SELECT 1 FROM coding_jobs j WHERE j.session_id = s.id AND j.status = 'failed')
ORDER BY s.id LIMIT %(limit)s

-- The queue's functions (the plan's four, the queue_* ones, the trigger
-- functions) that PUBLIC may execute, directly or by default privileges.
-- name: doctor_function_executable_by_public
SELECT p.oid::regprocedure::text AS function, count(*) OVER () AS total
FROM pg_proc p
WHERE p.pronamespace = (SELECT oid FROM pg_namespace WHERE nspname = current_schema())
  AND (p.proname IN ('claim_next_job', 'complete_job', 'fail_job', 'get_queue_stats',
                     'cancel_job', 'notify_job_status_change')
       OR pg_catalog.starts_with(p.proname::text, 'queue_'))
  AND EXISTS (SELECT 1 FROM aclexplode(coalesce(p.proacl, acldefault('f', p.proowner))) a
              WHERE a.grantee = 0::oid AND a.privilege_type = 'EXECUTE')
ORDER BY 1 LIMIT %(limit)s
