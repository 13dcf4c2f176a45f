-- Named queries run by the Python code. Each starts with `-- name: <name>`;
-- parameters are psycopg placeholders; no SQL is ever built from strings.

-- name: claim_next_job
SELECT job_id AS id, session_id, prompt, lease_token, attempt, retry_count, max_retries, priority
FROM claim_next_job(%(worker_id)s, %(lease_key)s::uuid)

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
                         %(worker_id)s, %(lease_key)s::uuid)

-- A pod's heartbeat: every running attempt in one statement.
-- name: renew_leases
SELECT job_id, renewed, coalesce(cancel_requested, false) AS cancel_requested
FROM queue_renew_leases(%(job_ids)s::uuid[], %(lease_tokens)s::uuid[])

-- name: add_events
SELECT queue_add_events(%(job_id)s, %(lease_token)s, %(kinds)s::text[], %(payloads)s::jsonb[])

-- name: set_output
SELECT queue_set_output(%(job_id)s, %(lease_token)s, %(output)s)

-- name: release_job
SELECT queue_release_job(%(job_id)s, %(lease_token)s, %(reason)s)

-- The jobs a dead worker holds, for the supervisor to give back those it never
-- started (their tokens: the supervisor's to derive from its lease key).
-- name: claims_of_worker
SELECT job_id, attempt FROM queue_claims_of_worker(%(worker_id)s)

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
       waiting_retry_count, next_run_at, cancelled_count, delayed_count, next_retry_at,
       events_dropped, event_bytes_dropped,
       releases_counted
FROM get_queue_stats()

-- name: next_run_at
SELECT queue_next_run_at() AS next_run_at, queue_now() AS now

-- When the next pending job comes due, and how many could start now (up to limit):
-- what the pod that answers for new jobs wakes its idle workers for.
-- name: due_jobs
SELECT queue_next_run_at() AS next_run_at, queue_now() AS now, queue_due_jobs(%(limit)s) AS due

-- Many pods, one database (JOB_QUEUE.md). Two session-level advisory locks of
-- the hub's direct connection, keyed (class 'MobV', 1) and (class 'MobV', 2):
-- the doorman, the one pod that LISTENs for new jobs, and the leader, the one
-- pod whose embedded reaper sweeps. A lock is freed when its session ends, a
-- pod killed with -9 included, and the next in line has it at once.
-- The doorman's lock, waited for at most lock_timeout_ms (>= 1; 0 would wait for
-- ever) in the server: PostgreSQL hands a freed lock to the first in its queue,
-- so a doorman that gives it up wakes exactly one waiting pod. The subquery
-- (OFFSET 0 keeps it one) sets the timeout before the lock is asked for.
-- name: wait_doorman
SELECT pg_advisory_lock(1299145302, 1) IS NOT NULL AS taken
FROM (SELECT set_config('lock_timeout', %(lock_timeout_ms)s::text || 'ms', true) OFFSET 0) t

-- A doorman with no idle worker left offers its part: the lock goes to the pod
-- first in line, if one waits; if none does, it is taken back.
-- name: offer_doorman
SELECT pg_try_advisory_lock(1299145302, 1) AS kept
FROM (SELECT pg_advisory_unlock(1299145302, 1) OFFSET 0) t

-- name: lead_reaper
SELECT pg_try_advisory_lock(1299145302, 2) AS leader

-- name: create_session
INSERT INTO coding_sessions (id, max_concurrency, user_id)
VALUES (%(session_id)s, %(max_concurrency)s, %(user_id)s)
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

-- The session's job with each key (n: the position asked), and whether its
-- prompt differs from the one given (a double tap with another prompt: ignored).
-- name: jobs_by_idempotency_key
SELECT t.n, j.id, j.prompt IS DISTINCT FROM t.p AS prompt_differs
FROM unnest(%(session_ids)s::uuid[], %(keys)s::text[], %(prompts)s::text[])
     WITH ORDINALITY AS t(s, k, p, n)
JOIN coding_jobs j ON j.session_id = t.s AND j.idempotency_key = t.k

-- The ids from low to high (those that start with the hex digits a person
-- typed): the primary key's order is the uuid's bytes', the hex text's. Two
-- at most: one is the id, two say the start is not enough.
-- name: job_ids_between
SELECT id FROM coding_jobs WHERE id BETWEEN %(low)s AND %(high)s ORDER BY id LIMIT 2

-- name: session_ids_between
SELECT id FROM coding_sessions WHERE id BETWEEN %(low)s AND %(high)s ORDER BY id LIMIT 2

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
       attempt, end_reason, idempotency_key, cancel_requested_at, output,
       waiting_for
FROM coding_jobs WHERE id = %(job_id)s

-- name: job_attempts
SELECT job_id, attempt, worker_id, started_at, ended_at, end_reason, error_message, events,
       events_dropped
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
  AND (%(user_id)s::uuid IS NULL
       OR session_id IN (SELECT s.id FROM coding_sessions s WHERE s.user_id = %(user_id)s::uuid))
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
       extract(epoch FROM queue_now() - least(greatest(heartbeat_at, timestamptz '0001-01-01Z'),
                                              timestamptz '9999-12-31Z'))::float8
           AS heartbeat_age_seconds,
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
-- the migration runner reads queue_migrations and queue_repeatables). A schema
-- whose queue_settings() predates functions_checksum reads NULL for it: not current.
-- name: queue_settings
SELECT schema_version, heartbeat_timeout, retain_completed, retain_failed, backoff_base,
       backoff_cap, backoff_jitter, to_jsonb(s) ->> 'functions_checksum' AS functions_checksum,
       (to_jsonb(s) ->> 'max_events_per_attempt')::integer AS max_events_per_attempt,
       (to_jsonb(s) ->> 'max_event_bytes_per_attempt')::bigint AS max_event_bytes_per_attempt,
       (to_jsonb(s) ->> 'max_releases_per_job')::integer AS max_releases_per_job,
       (to_jsonb(s) ->> 'user_max_concurrency')::integer AS user_max_concurrency
FROM queue_settings() s

-- name: queue_settings_exists
SELECT to_regprocedure('queue_settings()') IS NOT NULL

-- Whether this role may read queue_migrations (operators and the owner).
-- name: migrations_readable
SELECT pg_catalog.to_regclass('public.queue_migrations') IS NOT NULL
       AND pg_catalog.has_table_privilege('public.queue_migrations', 'SELECT')

-- name: repeatables_readable
SELECT pg_catalog.to_regclass('public.queue_repeatables') IS NOT NULL
       AND pg_catalog.has_table_privilege('public.queue_repeatables', 'SELECT')

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
                         ELSE nullif(%(retain_failed)s::float8, 0) * interval '1 second' END,
    max_events_per_attempt = coalesce(%(max_events_per_attempt)s::integer,
                                      max_events_per_attempt),
    max_event_bytes_per_attempt = coalesce(%(max_event_bytes_per_attempt)s::bigint,
                                           max_event_bytes_per_attempt),
    max_releases_per_job = coalesce(%(max_releases_per_job)s::integer, max_releases_per_job),
    user_max_concurrency = CASE WHEN %(user_max_concurrency)s::integer IS NULL
                                THEN user_max_concurrency
                                ELSE nullif(%(user_max_concurrency)s::integer, 0) END

-- The migration runner. It runs as the owner, usually a superuser, so every
-- statement of its own runs with search_path pinned (set_local) and names the
-- queue's objects public.*: nothing a role planted runs as the owner.

-- A setting for the rest of this transaction only.
-- name: set_local
SELECT pg_catalog.set_config(%(name)s, %(value)s, true)

-- name: create_migrations_table
CREATE TABLE IF NOT EXISTS public.queue_migrations (
    version    integer PRIMARY KEY,
    name       text NOT NULL,
    checksum   text NOT NULL,
    applied_at timestamptz NOT NULL DEFAULT now()
)

-- One migration run at a time, per database. A table lock rather than an
-- advisory lock: any login may take any advisory lock, while this mode needs
-- UPDATE, DELETE or TRUNCATE on queue_migrations (its owner's alone, see
-- privileges.sql), and it lets operators read the table meanwhile.
-- name: lock_migrations
LOCK TABLE public.queue_migrations IN SHARE ROW EXCLUSIVE MODE

-- Who holds a lock on queue_migrations that the runner waits for.
-- name: migrations_lock_holder
SELECT a.pid, a.usename::text AS user_name, a.application_name
FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid
WHERE l.locktype = 'relation' AND l.relation = 'public.queue_migrations'::regclass
  AND l.database = (SELECT d.oid FROM pg_database d WHERE d.datname = current_database())
  AND l.granted AND l.pid <> pg_backend_pid()
  AND l.mode IN ('RowExclusiveLock', 'ShareUpdateExclusiveLock', 'ShareLock',
                 'ShareRowExclusiveLock', 'ExclusiveLock', 'AccessExclusiveLock')
ORDER BY a.backend_start
LIMIT 1

-- name: applied_migrations
SELECT version, name, checksum FROM public.queue_migrations ORDER BY version

-- name: record_migration
INSERT INTO public.queue_migrations (version, name, checksum)
VALUES (%(version)s, %(name)s, %(checksum)s)

-- name: migrations_table_exists
SELECT pg_catalog.to_regclass('public.queue_migrations') IS NOT NULL

-- The function files and sql/privileges.sql as last applied: a file whose text
-- differs from its checksum here is applied again.
-- name: create_repeatables_table
CREATE TABLE IF NOT EXISTS public.queue_repeatables (
    name       text PRIMARY KEY,
    checksum   text NOT NULL,
    applied_at timestamptz NOT NULL DEFAULT now()
)

-- name: applied_repeatables
SELECT name, checksum FROM public.queue_repeatables ORDER BY name

-- The function files are applied with their bodies unchecked, so that their
-- order does not matter (as pg_dump does): a SQL function may call one whose
-- file comes later. Each body is checked once all are there (check_function).
-- name: defer_body_checks
SET LOCAL check_function_bodies = off

-- name: record_repeatable
INSERT INTO public.queue_repeatables (name, checksum) VALUES (%(name)s, %(checksum)s)
ON CONFLICT (name) DO UPDATE SET checksum = excluded.checksum, applied_at = now()

-- A file this version does not ship is forgotten: its function is dropped by a
-- numbered migration, and its record would make the schema look stale forever.
-- Whether the database has Supabase's shape: the roles anon and authenticated,
-- and auth.uid() (sql/row_security.sql checks the same).
-- name: supabase_shape
SELECT EXISTS (SELECT 1 FROM pg_catalog.pg_roles WHERE rolname = 'authenticated')
       AND EXISTS (SELECT 1 FROM pg_catalog.pg_roles WHERE rolname = 'anon')
       AND pg_catalog.to_regprocedure('auth.uid()') IS NOT NULL

-- The shape sql/row_security.sql was applied for; NULL if it never was, or
-- before migration 0013 (which made the column).
-- name: row_security_shape
SELECT (pg_catalog.to_jsonb(r) ->> 'supabase')::boolean FROM public.queue_repeatables r
WHERE r.name = 'row_security.sql'

-- name: record_row_security_shape
UPDATE public.queue_repeatables SET supabase = %(supabase)s WHERE name = 'row_security.sql'

-- name: forget_repeatables
DELETE FROM public.queue_repeatables WHERE name <> ALL (%(shipped)s::text[])

-- name: check_bodies
SET LOCAL check_function_bodies = on

-- The functions of the given names, each with its language's validator to run
-- (their signatures without the schema: it is the queue's).
-- name: functions_named
SELECT p.oid, pg_catalog.regexp_replace(p.oid::regprocedure::text, '^public\.', '')
       AS signature
FROM pg_catalog.pg_proc p
WHERE p.pronamespace = 'public'::regnamespace AND p.proname = ANY (%(names)s::text[])
ORDER BY 2

-- What CREATE FUNCTION checks when check_function_bodies is on: the body's syntax
-- (PL/pgSQL), or its parse and analysis against the tables and functions (SQL).
-- name: check_function
SELECT CASE l.lanname WHEN 'plpgsql' THEN pg_catalog.plpgsql_validator(p.oid)
                      WHEN 'sql' THEN pg_catalog.fmgr_sql_validator(p.oid) END
FROM pg_catalog.pg_proc p JOIN pg_catalog.pg_language l ON l.oid = p.prolang
WHERE p.oid = %(oid)s

-- The roles that may create objects in public, other than superusers and the
-- roles that can act as the migrating role anyway ('PUBLIC': every role may).
-- pg_database_owner is its one member, the database's owner, listed itself.
-- name: public_schema_writers
SELECT 'PUBLIC' WHERE has_schema_privilege('public', 'public', 'CREATE')
UNION ALL
(SELECT r.rolname::text FROM pg_roles r
 WHERE NOT r.rolsuper AND r.rolname <> 'pg_database_owner'
   AND NOT pg_has_role(r.oid, current_user, 'MEMBER')
   AND has_schema_privilege(r.oid, 'public', 'CREATE')
 ORDER BY 1)

-- What such a role may have planted in public, which a migration would run as
-- its caller: functions (aggregates too) and operators, whatever their name (an
-- overload that matches better wins over pg_catalog's), and tables under the
-- queue's own names (their triggers, defaults and policies would run).
-- name: planted_objects
SELECT o.kind, o.name, r.rolname::text AS owner
FROM (SELECT 'function' AS kind, p.oid::regprocedure::text AS name, p.proowner AS owner
      FROM pg_proc p WHERE p.pronamespace = 'public'::regnamespace
      UNION ALL
      SELECT 'operator', o.oid::regoperator::text, o.oprowner
      FROM pg_operator o WHERE o.oprnamespace = 'public'::regnamespace
      UNION ALL
      SELECT 'table', c.oid::regclass::text, c.relowner
      FROM pg_class c
      WHERE c.relnamespace = 'public'::regnamespace
        AND c.relname IN ('coding_sessions', 'coding_jobs', 'coding_job_attempts',
                          'coding_job_events', 'queue_config', 'queue_reaper_runs',
                          'queue_migrations', 'queue_repeatables', 'queue_counters')) o
JOIN pg_roles r ON r.oid = o.owner
WHERE NOT r.rolsuper AND NOT pg_has_role(r.oid, current_user, 'MEMBER')
ORDER BY o.kind, o.name

-- name: current_role
SELECT current_user::text

-- The checks of `mobvibe-queue doctor`: each returns the offending rows (up to
-- the limit) with, last, how many there are in all.

-- name: doctor_processing_without_live_attempt
SELECT id AS job_id, session_id, worker_id,
       extract(epoch FROM queue_now() - least(greatest(heartbeat_at, timestamptz '0001-01-01Z'),
                                              timestamptz '9999-12-31Z'))::float8
           AS silent_seconds,
       count(*) OVER () AS total
FROM coding_jobs
WHERE status = 'processing'
  AND (heartbeat_at IS NULL OR heartbeat_at < queue_now() - %(timeout)s)
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

-- Users: an operator's limit (NULL clears it), and the users the queue knows,
-- with their jobs running, ready and waiting for their limit.
-- name: set_user_limit
SELECT queue_set_user_limit(%(user_id)s::uuid, %(max_concurrency)s::integer)

-- name: user_list
SELECT user_id, max_concurrency, limit_source, running, ready, waiting, last_started_at
FROM queue_user_list(%(waiting_only)s::boolean)
LIMIT %(limit)s

-- The users with jobs waiting for their limit, most waiting first, with their
-- jobs processing (the status page, read by the supervisor's role: from
-- coding_jobs alone, by coding_jobs_user_idx).
-- name: users_waiting
WITH w AS (
    SELECT user_key, count(*) AS waiting FROM coding_jobs
    WHERE status = 'pending' AND waiting_for = 'user'
    GROUP BY user_key)
SELECT w.user_key AS user_id, w.waiting,
       (SELECT count(*) FROM coding_jobs r
        WHERE r.user_key = w.user_key AND r.status = 'processing') AS running
FROM w
ORDER BY w.waiting DESC, w.user_key
LIMIT %(limit)s
