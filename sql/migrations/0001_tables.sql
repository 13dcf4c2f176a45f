-- Tables of the job queue: coding_sessions (owned by another phase; created
-- here only when missing) and coding_jobs, plus the queue's own settings.

-- Sessions belong to another MobVibe phase: create the table only if it is
-- missing, and add only the columns the queue writes when a job dead-letters.
CREATE TABLE IF NOT EXISTS coding_sessions (
    id            uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    status        text DEFAULT 'active',
    error_message text,
    created_at    timestamptz NOT NULL DEFAULT now(),
    updated_at    timestamptz DEFAULT now()
);
ALTER TABLE coding_sessions ADD COLUMN IF NOT EXISTS status text DEFAULT 'active';
ALTER TABLE coding_sessions ADD COLUMN IF NOT EXISTS error_message text;
ALTER TABLE coding_sessions ADD COLUMN IF NOT EXISTS updated_at timestamptz DEFAULT now();

CREATE TABLE IF NOT EXISTS coding_jobs (
    id            uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    session_id    uuid NOT NULL REFERENCES coding_sessions (id) ON DELETE CASCADE,
    prompt        text NOT NULL,
    priority      smallint NOT NULL DEFAULT 0,
    status        text NOT NULL DEFAULT 'pending',
    retry_count   integer NOT NULL DEFAULT 0,
    max_retries   integer NOT NULL DEFAULT 3,
    error_message text,
    created_at    timestamptz NOT NULL DEFAULT now(),
    started_at    timestamptz,
    completed_at  timestamptz,
    updated_at    timestamptz NOT NULL DEFAULT now()
) WITH (fillfactor = 80, autovacuum_vacuum_scale_factor = 0.02, autovacuum_analyze_scale_factor = 0.02);

-- The queue's own columns and checks are added, not created with the table, so
-- that a coding_jobs made earlier with only the plan's columns gains them too.

-- not claimable before run_at; backoff moves it forward
ALTER TABLE coding_jobs ADD COLUMN IF NOT EXISTS run_at timestamptz NOT NULL DEFAULT now();
-- last sign of life of the attempt holding the job
ALTER TABLE coding_jobs ADD COLUMN IF NOT EXISTS heartbeat_at timestamptz;
-- identity of the attempt holding the job: who, which claim, which number
ALTER TABLE coding_jobs ADD COLUMN IF NOT EXISTS worker_id text;
ALTER TABLE coding_jobs ADD COLUMN IF NOT EXISTS lease_token uuid;
ALTER TABLE coding_jobs ADD COLUMN IF NOT EXISTS attempt integer NOT NULL DEFAULT 0;
-- why the last attempt ended (see docs/backend/JOB_QUEUE.md)
ALTER TABLE coding_jobs ADD COLUMN IF NOT EXISTS end_reason text;
-- tie-break for jobs created in the same instant (uuids are unordered)
ALTER TABLE coding_jobs ADD COLUMN IF NOT EXISTS seq bigint GENERATED ALWAYS AS IDENTITY;

DO $$
DECLARE
    c record;
BEGIN
    FOR c IN SELECT * FROM (VALUES
        ('coding_jobs_status_check',
         $c$CHECK (status IN ('pending', 'processing', 'completed', 'failed'))$c$),
        ('coding_jobs_prompt_check',
         $c$CHECK (prompt <> '' AND octet_length(prompt) <= 1048576)$c$),
        ('coding_jobs_priority_check', $c$CHECK (priority BETWEEN 0 AND 10)$c$),
        ('coding_jobs_max_retries_check', $c$CHECK (max_retries BETWEEN 1 AND 100)$c$),
        ('coding_jobs_retry_count_check', $c$CHECK (retry_count BETWEEN 0 AND max_retries)$c$),
        ('coding_jobs_lease_check',
         $c$CHECK (status <> 'processing'
                 OR (lease_token IS NOT NULL AND heartbeat_at IS NOT NULL))$c$)
    ) AS t (name, definition)
    LOOP
        IF NOT EXISTS (SELECT 1 FROM pg_constraint
                       WHERE conrelid = 'coding_jobs'::regclass AND conname = c.name) THEN
            EXECUTE format('ALTER TABLE coding_jobs ADD CONSTRAINT %I %s', c.name, c.definition);
        END IF;
    END LOOP;
END
$$;

-- The claim walks this index in ORDER BY order and stops at the first due,
-- unlocked row. Only pending rows are in it, so its cost does not grow with
-- the number of completed or failed jobs.
CREATE INDEX IF NOT EXISTS coding_jobs_claim_idx
    ON coding_jobs (priority DESC, created_at, seq) WHERE status = 'pending';

-- The reaper's scan: only the few processing rows. heartbeat_at is kept out of
-- every index so that heartbeat updates stay HOT.
CREATE INDEX IF NOT EXISTS coding_jobs_processing_idx
    ON coding_jobs (started_at) WHERE status = 'processing';

-- Retention and the dead-letter list.
CREATE INDEX IF NOT EXISTS coding_jobs_completed_idx
    ON coding_jobs (completed_at) WHERE status = 'completed';
CREATE INDEX IF NOT EXISTS coding_jobs_failed_idx
    ON coding_jobs (completed_at) WHERE status = 'failed';

CREATE INDEX IF NOT EXISTS coding_jobs_session_idx ON coding_jobs (session_id);

-- The retry schedule and the queue's tunables, one row, changed with UPDATE or
-- `mobvibe-queue config`; nobody edits SQL to tune the backoff.
CREATE TABLE IF NOT EXISTS queue_config (
    singleton       boolean PRIMARY KEY DEFAULT true CHECK (singleton),
    backoff_base    interval NOT NULL DEFAULT '10 seconds' CHECK (backoff_base > '0'),
    backoff_cap     interval NOT NULL DEFAULT '10 minutes',
    backoff_jitter  double precision NOT NULL DEFAULT 0.25 CHECK (backoff_jitter BETWEEN 0 AND 1),
    CHECK (backoff_cap >= backoff_base)
);
INSERT INTO queue_config DEFAULT VALUES ON CONFLICT DO NOTHING;

-- When each reaper last finished a sweep, so that a CronJob reaper that nobody
-- scrapes is still visible in the metrics.
CREATE TABLE IF NOT EXISTS queue_reaper_runs (
    reaper        text PRIMARY KEY,
    last_sweep_at timestamptz NOT NULL,
    requeued      bigint NOT NULL DEFAULT 0,
    dead_lettered bigint NOT NULL DEFAULT 0,
    pruned        bigint NOT NULL DEFAULT 0
);
