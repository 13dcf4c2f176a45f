-- What no row, login or byte may do to the queue: the tables' half (the
-- functions that enforce it are in sql/functions, their grants in
-- sql/privileges.sql).
--
-- The runner applies this file (and every later one) with search_path =
-- pg_catalog, pg_temp: an unqualified name can only be a built-in, so every
-- object of the queue is named public.*. It creates no table IF NOT EXISTS: a
-- table of the same name that someone else made fails the migration, rather
-- than running its triggers and defaults as the owner.
--
-- Caps held by the database, whoever writes: an attempt's progress events (by
-- count and by bytes: past either, the rest of the attempt's events are
-- dropped and counted, queue_add_events) and a job's releases (past the cap, a
-- release counts as a failed attempt, queue_finish). Defaults here, in
-- queue_config; operators change them (`mobvibe-queue config`).

ALTER TABLE public.queue_config
    ADD COLUMN max_events_per_attempt integer NOT NULL DEFAULT 10000
        CONSTRAINT queue_config_max_events_per_attempt_check
        CHECK (max_events_per_attempt BETWEEN 1 AND 1000000),
    ADD COLUMN max_event_bytes_per_attempt bigint NOT NULL DEFAULT 10485760
        CONSTRAINT queue_config_max_event_bytes_per_attempt_check
        CHECK (max_event_bytes_per_attempt BETWEEN 65536 AND 1073741824),
    ADD COLUMN max_releases_per_job integer NOT NULL DEFAULT 20
        CONSTRAINT queue_config_max_releases_per_job_check
        CHECK (max_releases_per_job BETWEEN 1 AND 1000);

-- What an attempt has written, and what the caps dropped of it.
ALTER TABLE public.coding_job_attempts
    ADD COLUMN events integer NOT NULL DEFAULT 0,
    ADD COLUMN event_bytes bigint NOT NULL DEFAULT 0,
    ADD COLUMN events_dropped integer NOT NULL DEFAULT 0;

-- Releases since the job was submitted (an operator's requeue starts again).
ALTER TABLE public.coding_jobs ADD COLUMN release_count integer NOT NULL DEFAULT 0;

-- Totals since the queue was made, for the metrics: they only go up, whatever
-- retention deletes. One row, written only when a cap acts.
CREATE TABLE public.queue_counters (
    singleton           boolean PRIMARY KEY DEFAULT true CHECK (singleton),
    events_dropped      bigint NOT NULL DEFAULT 0,
    event_bytes_dropped bigint NOT NULL DEFAULT 0,
    releases_counted    bigint NOT NULL DEFAULT 0
);
INSERT INTO public.queue_counters DEFAULT VALUES;
