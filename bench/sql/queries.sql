-- Named queries of the benchmark. Each starts with `-- name: <name>`;
-- parameters are psycopg placeholders.

-- name: server_settings
SELECT name, setting, unit FROM pg_settings WHERE name = ANY(%(names)s) ORDER BY name

-- name: server_version
SELECT version()

-- name: backend_pid
SELECT pg_backend_pid()

-- The floors' table: coding_jobs' columns, defaults, checks, identity and
-- indexes (the partial claim index included), without its triggers and its
-- foreign key, so that the floor is what PostgreSQL does for this row shape.
-- name: create_floor_table
CREATE TABLE bench_jobs (LIKE coding_jobs INCLUDING ALL)

-- LIKE copies no storage parameters (fillfactor...): the floor gets coding_jobs' own.
-- name: table_options
SELECT coalesce(reloptions, '{}') FROM pg_class WHERE oid = 'coding_jobs'::regclass

-- name: create_session
INSERT INTO coding_sessions (id) VALUES (%(session_id)s)

-- Pending jobs for the floors, oldest first, one microsecond apart.
-- name: load_floor_jobs
INSERT INTO bench_jobs (session_id, prompt, created_at)
SELECT %(session_id)s, 'Build a todo app with React Native: benchmark job ' || g,
       now() - interval '1 hour' + g * interval '1 microsecond'
FROM generate_series(1, %(count)s) AS g

-- name: truncate_floor_jobs
TRUNCATE bench_jobs

-- name: analyze_floor_jobs
ANALYZE bench_jobs

-- The same on coding_jobs. The new_job trigger is off during the load (one
-- notification per row is not what is measured), inside the load's
-- transaction, so no other session ever sees it off.
-- name: disable_new_job_trigger
ALTER TABLE coding_jobs DISABLE TRIGGER on_job_created

-- name: enable_new_job_trigger
ALTER TABLE coding_jobs ENABLE TRIGGER on_job_created

-- name: load_pending_jobs
WITH s AS (INSERT INTO coding_sessions (id)
           SELECT gen_random_uuid() FROM generate_series(1, %(count)s) RETURNING id),
     n AS (SELECT id, row_number() OVER () AS g FROM s)
INSERT INTO coding_jobs (session_id, prompt, created_at)
SELECT id, 'Build a todo app with React Native: benchmark job ' || g,
       now() - interval '1 hour' + g * interval '1 microsecond'
FROM n ORDER BY g

-- A table of `count` jobs of which a `pending_share` are due pending, the rest
-- finished as a queue leaves them (mostly completed, one in ten failed), on
-- `sessions` sessions.
-- name: load_mixed_jobs
INSERT INTO coding_jobs (session_id, prompt, status, retry_count, max_retries, error_message,
                         end_reason, created_at, started_at, completed_at, run_at, attempt)
SELECT s.session_id, 'Build a todo app with React Native: benchmark job ' || g, st.status,
       CASE st.status WHEN 'failed' THEN 3 ELSE 0 END, 3,
       CASE st.status WHEN 'failed' THEN 'benchmark failure' END,
       CASE st.status WHEN 'pending' THEN NULL ELSE st.status END,
       t.created_at,
       CASE st.status WHEN 'pending' THEN NULL ELSE t.created_at + interval '1 second' END,
       CASE st.status WHEN 'pending' THEN NULL ELSE t.created_at + interval '2 seconds' END,
       t.created_at,
       CASE st.status WHEN 'pending' THEN 0 ELSE 1 END
FROM generate_series(1, %(count)s) AS g
CROSS JOIN LATERAL (SELECT now() - interval '30 days'
                           + g * (interval '30 days' / %(count)s) AS created_at) AS t
CROSS JOIN LATERAL (SELECT CASE
        WHEN g > %(count)s - %(count)s * %(pending_share)s THEN 'pending'
        WHEN g %% 10 = 0 THEN 'failed'
        ELSE 'completed' END AS status) AS st
CROSS JOIN LATERAL (SELECT (%(session_ids)s::uuid[])[1 + g %% %(sessions)s] AS session_id) AS s

-- Sessions owned by users: the i-th session by the i-th user id (repeated).
-- name: create_user_sessions
INSERT INTO coding_sessions (id, user_id)
SELECT * FROM unnest(%(session_ids)s::uuid[], %(user_ids)s::uuid[])

-- The limit of users without a row of queue_user_limits (NULL: none).
-- name: set_user_max_concurrency
UPDATE queue_config SET user_max_concurrency = %(limit)s

-- name: create_sessions
INSERT INTO coding_sessions (id) SELECT unnest(%(session_ids)s::uuid[])

-- Sessions that let a hundred of their prompts run at once: the mixed shapes'
-- pending jobs may all start, as before sessions had a limit.
-- name: create_wide_sessions
INSERT INTO coding_sessions (id, max_concurrency) SELECT unnest(%(session_ids)s::uuid[]), 100

-- The claim-cost shapes with a million pending jobs of which 99 per cent cannot
-- start.
-- Loaded with the placing trigger off (it would lock each session per row): the
-- rows are placed here as it would place them. "blocked": `sessions` sessions
-- of `per_session` prompts each, the oldest of each may start, the others wait
-- for it. "backoff": `waiting` heads of their own sessions back off for a day,
-- `ready` others may start.
-- name: disable_user_triggers
ALTER TABLE coding_jobs DISABLE TRIGGER USER

-- name: enable_user_triggers
ALTER TABLE coding_jobs ENABLE TRIGGER USER

-- name: load_blocked_sessions
WITH s AS (INSERT INTO coding_sessions (id)
           SELECT gen_random_uuid() FROM generate_series(1, %(sessions)s) RETURNING id)
INSERT INTO coding_jobs (session_id, prompt, waiting_for)
SELECT s.id, 'Build a todo app with React Native: benchmark job ' || g,
       CASE WHEN g = 1 THEN NULL ELSE 'session' END
FROM s, generate_series(1, %(per_session)s) AS g
ORDER BY g, s.id

-- "user-limited": `users` users, each with `per_user` prompts in as many
-- sessions of its own, one of them processing (its start numbered in turn) and
-- the others waiting for the user's limit of one (queue_config's default); the
-- users' rows of queue_users as the claims and the placing trigger leave them.
-- name: load_user_limited
WITH u AS (SELECT gen_random_uuid() AS user_key, g AS turn
           FROM generate_series(1, %(users)s) AS g),
     users AS (INSERT INTO queue_users (user_key, max_concurrency, running, turn,
                                        last_started_at, ready)
               SELECT user_key, 1, 1, turn, now(), false FROM u),
     s AS (INSERT INTO coding_sessions (id, user_id)
           SELECT gen_random_uuid(), u.user_key FROM u, generate_series(1, %(per_user)s)
           RETURNING id, user_id),
     n AS (SELECT id, user_id, row_number() OVER (PARTITION BY user_id) AS k FROM s)
INSERT INTO coding_jobs (session_id, user_key, prompt, status, waiting_for, started_at,
                         heartbeat_at, worker_id, lease_token, attempt)
SELECT n.id, n.user_id, 'Build a todo app with React Native: benchmark job ' || n.k,
       CASE WHEN n.k = 1 THEN 'processing' ELSE 'pending' END,
       CASE WHEN n.k = 1 THEN NULL ELSE 'user' END,
       CASE WHEN n.k = 1 THEN now() END,
       CASE WHEN n.k = 1 THEN now() END,
       CASE WHEN n.k = 1 THEN 'bench:elsewhere' END,
       CASE WHEN n.k = 1 THEN gen_random_uuid() END,
       CASE WHEN n.k = 1 THEN 1 ELSE 0 END
FROM n ORDER BY n.k, n.user_id

-- The starts numbered by the load come before those of the claims.
-- name: advance_turns
SELECT setval('queue_turn_seq', %(users)s)

-- A session of a new user and its one prompt, placed by the queue itself.
-- name: ready_user_job
WITH s AS (INSERT INTO coding_sessions (id, user_id)
           VALUES (gen_random_uuid(), gen_random_uuid()) RETURNING id)
INSERT INTO coding_jobs (session_id, prompt)
SELECT id, 'Build a todo app with React Native: benchmark job' FROM s

-- name: load_backed_off
WITH s AS (INSERT INTO coding_sessions (id)
           SELECT gen_random_uuid() FROM generate_series(1, %(waiting)s + %(ready)s)
           RETURNING id),
     n AS (SELECT id, row_number() OVER () AS g FROM s)
INSERT INTO coding_jobs (session_id, prompt, run_at, retry_count, waiting_for)
SELECT n.id, 'Build a todo app with React Native: benchmark job ' || n.g,
       CASE WHEN n.g <= %(waiting)s THEN now() + interval '1 day' ELSE now() END,
       CASE WHEN n.g <= %(waiting)s THEN 1 ELSE 0 END,
       CASE WHEN n.g <= %(waiting)s THEN 'run_at' END
FROM n

-- name: analyze_jobs
ANALYZE coding_jobs

-- name: vacuum_analyze_jobs
VACUUM (ANALYZE) coding_jobs

-- name: truncate_jobs
TRUNCATE coding_jobs, coding_job_attempts, coding_job_events

-- The claim cost loop keeps the table's size and mix: the completed job is
-- deleted and a new pending job takes its place, at the back of the queue.
-- A new prompt at the back of the completed job's session (its place taken by
-- the next one), so that the shape stays as loaded.
-- name: replace_completed_job
WITH gone AS (DELETE FROM coding_jobs WHERE id = %(job_id)s RETURNING session_id)
INSERT INTO coding_jobs (session_id, prompt)
SELECT session_id, 'Build a todo app with React Native: benchmark job' FROM gone

-- name: drain_span
SELECT count(*) FILTER (WHERE status = 'completed'), count(*),
       extract(epoch FROM max(completed_at) - min(started_at))
FROM coding_jobs

-- name: completed_count
SELECT count(*) FROM coding_jobs WHERE status = 'completed'

-- name: job_state
SELECT status, worker_id, end_reason, error_message, attempt FROM coding_jobs WHERE id = %(job_id)s

-- Workers connected and waiting (idle between statements) on this database.
-- name: idle_workers
SELECT count(*) FROM pg_stat_activity
WHERE application_name = 'mobvibe-worker' AND state = 'idle' AND datname = current_database()

-- name: job_status
SELECT status FROM coding_jobs WHERE id = %(job_id)s

-- The claim's inner query, to show its plan in the report.
-- name: explain_claim
EXPLAIN (ANALYZE, BUFFERS, COSTS OFF, TIMING OFF, SUMMARY OFF)
SELECT c.id FROM coding_jobs c
WHERE c.status = 'pending' AND c.waiting_for IS NULL AND c.run_at <= queue_now()
ORDER BY c.priority DESC, c.seq
LIMIT 1
FOR UPDATE SKIP LOCKED

-- A whole claim, its buffers: those of the statements the function runs count
-- in the node that calls it.
-- name: explain_claim_call
EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON)
SELECT * FROM claim_next_job('bench:explain')

-- The pod's connections to this database, by application (the measuring one left out).
-- name: pod_connections
SELECT application_name, count(*) FROM pg_stat_activity
WHERE datname = current_database() AND pid <> pg_backend_pid()
GROUP BY application_name

-- name: flush_stats
SELECT pg_stat_force_next_flush()

-- name: database_transactions
SELECT xact_commit + xact_rollback FROM pg_stat_database WHERE datname = current_database()

-- `count` jobs of one session behind a job that is running elsewhere (claimed
-- here, in the same transaction, so that no worker of the pod gets it first),
-- with a heartbeat timeout long enough that no reaper takes it back meanwhile.
-- name: load_blocked_jobs
WITH config AS (UPDATE queue_config SET heartbeat_timeout = '1 day' RETURNING 1),
     session AS (INSERT INTO coding_sessions (id) VALUES (gen_random_uuid()) RETURNING id),
     jobs AS (INSERT INTO coding_jobs (session_id, prompt)
              SELECT id, 'blocked behind a running prompt ' || g
              FROM session, generate_series(0, %(count)s) AS g
              RETURNING id)
SELECT count(*) FROM jobs, config

-- name: claim_one
SELECT job_id FROM claim_next_job('bench:elsewhere')

-- Another pod's hub, as far as the server's notification signals go.
-- name: listen_like_a_hub
LISTEN job_cancel

-- Every call of a function counted, nested ones included, by every backend of
-- this database that starts after it.
-- name: track_functions
DO $$ BEGIN
    EXECUTE format('ALTER DATABASE %I SET track_functions = ''all''', current_database());
END $$

-- name: function_calls
SELECT sum(calls) FROM pg_stat_user_functions WHERE funcname = %(name)s

-- name: processing_count
SELECT count(*) FROM coding_jobs WHERE status = 'processing'

-- name: last_sweeper
SELECT reaper FROM queue_reaper_runs ORDER BY last_sweep_at DESC LIMIT 1

-- name: sweeps_since
SELECT reaper, extract(epoch FROM last_sweep_at) FROM queue_reaper_runs
WHERE last_sweep_at > to_timestamp(%(since)s)

-- A hub's try for the embedded reaper's lead (sql/queries.sql: lead_reaper).
-- name: lead_reaper
SELECT pg_try_advisory_lock(1299145302, 2) AS leader
