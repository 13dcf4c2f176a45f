-- Users: limits and turns (the order rule: sql/functions/queue_placement.sql).
--
-- A job of a user starts only while fewer than the user's limit of the user's
-- jobs are processing; among the jobs that may start: priority, then the user
-- whose most recent start is the oldest (a user with no start yet first; every
-- session with no user counts as one user), then seq.
--
-- queue_user_limits holds the operators' limits (a plan's tier), and
-- queue_config.user_max_concurrency the limit of users without a row (NULL:
-- none). queue_users is the queue's own small row per user: the limit in force,
-- the user's processing jobs (kept only while the user has a limit), the
-- user's turn, and whether the user may have jobs in the claim's index. Every
-- job carries its session's user (user_key), set by the placing trigger.

CREATE TABLE public.queue_user_limits (
    user_id         uuid PRIMARY KEY,
    max_concurrency integer NOT NULL
        CONSTRAINT queue_user_limits_max_concurrency_check
        CHECK (max_concurrency BETWEEN 1 AND 1000),
    updated_at      timestamptz NOT NULL DEFAULT pg_catalog.now()
);

ALTER TABLE public.queue_config
    ADD COLUMN user_max_concurrency integer
        CONSTRAINT queue_config_user_max_concurrency_check
        CHECK (user_max_concurrency BETWEEN 1 AND 1000);

-- The nil uuid stands for every session with no user: one user for turns,
-- never limited.
CREATE TABLE public.queue_users (
    user_key        uuid PRIMARY KEY,
    -- the limit in force (queue_user_limits, else queue_config); NULL: none
    max_concurrency integer,
    -- the user's processing jobs, kept while max_concurrency is set (else NULL)
    running         integer,
    -- the order of turns: the number of the user's most recent start
    -- (queue_turn_seq); before the first start, the seq of the job that made
    -- the user ready less 2^62 (so before every user that started)
    turn            bigint NOT NULL DEFAULT 0,
    last_started_at timestamptz,
    -- may have jobs that may start (the claim's walk; a stale true is passed over)
    ready           boolean NOT NULL DEFAULT false,
    CONSTRAINT queue_users_running_check
        CHECK ((max_concurrency IS NULL) = (running IS NULL) AND running >= 0)
);
CREATE SEQUENCE public.queue_turn_seq AS bigint;
INSERT INTO public.queue_users (user_key) VALUES ('00000000-0000-0000-0000-000000000000');

-- The users that may have jobs to start, in turn order: the claim's walk.
CREATE INDEX queue_users_turn_idx ON public.queue_users (turn) WHERE ready;

ALTER TABLE public.coding_jobs
    ADD COLUMN user_key uuid NOT NULL DEFAULT '00000000-0000-0000-0000-000000000000';

ALTER TABLE public.coding_jobs DROP CONSTRAINT coding_jobs_waiting_for_check;
ALTER TABLE public.coding_jobs ADD CONSTRAINT coding_jobs_waiting_for_check
    CHECK (waiting_for IN ('session', 'run_at', 'user') AND status = 'pending'
           OR waiting_for IS NULL);

-- A user's jobs by state: those that may start and those that wait for the
-- user's limit in the order the user's own jobs start (priority, then seq),
-- and those processing (counted when a limit is set). One index: every index
-- of coding_jobs costs each write, and each plan of a statement on the table.
CREATE INDEX coding_jobs_user_idx
    ON public.coding_jobs (user_key, status, waiting_for, priority DESC, seq)
    WHERE status = 'processing'
       OR status = 'pending' AND (waiting_for IS NULL OR waiting_for = 'user');

-- The jobs already queued take their session's user; their users get a row.
UPDATE public.coding_jobs j SET user_key = s.user_id
FROM public.coding_sessions s
WHERE s.id = j.session_id AND s.user_id IS NOT NULL;

INSERT INTO public.queue_users (user_key, ready)
SELECT j.user_key, pg_catalog.bool_or(j.status = 'pending' AND j.waiting_for IS NULL)
FROM public.coding_jobs j
WHERE j.status IN ('pending', 'processing')
GROUP BY j.user_key
ON CONFLICT (user_key) DO UPDATE SET ready = excluded.ready;
