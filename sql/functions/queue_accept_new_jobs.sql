-- A direct INSERT creates a pending job, due at its run_at, and nothing else:
-- every other state is reached through the queue's functions. One
-- statement-level trigger, one pass over the new rows: each is announced on
-- new_job and checked in the same scan, and the first impossible one aborts the
-- statement (its notifications, sent only at commit, with it). The single-job
-- enqueue is benchmarked: no per-row trigger. created_at and updated_at are the
-- insert's own time (their default, now()). waiting_for is the placing
-- trigger's (queue_place_new_job), not the INSERT's.
--
-- run_at is finite and within [2000-01-01, queue_now() + 1 year]: 'infinity'
-- or a year past 9999 is a time no client library reads back, and a row that
-- held one stopped every reader of the queue's time. The functions compute
-- every other time of a job from queue_now().
CREATE OR REPLACE FUNCTION public.queue_accept_new_jobs() RETURNS trigger
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    problem text;
    out_of_window text;
    announced bigint;
    latest timestamptz := public.queue_now() + interval '1 year';
BEGIN
    SELECT count(pg_notify('new_job', json_build_object(
               'job_id', n.id, 'session_id', n.session_id, 'priority', n.priority)::text)),
           min(CASE
               WHEN n.status IS DISTINCT FROM 'pending' THEN 'status ' || coalesce(n.status, 'NULL')
               WHEN n.attempt <> 0 THEN 'attempt ' || n.attempt
               WHEN n.retry_count <> 0 THEN 'retry_count ' || n.retry_count
               WHEN n.release_count <> 0 THEN 'release_count ' || n.release_count
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
               END || ' (job ' || n.id || ')'),
           min(CASE WHEN NOT isfinite(n.run_at) OR n.run_at < '2000-01-01 00:00:00+00'
                         OR n.run_at > latest
                    THEN n.run_at || ' (job ' || n.id || ')' END)
    INTO announced, problem, out_of_window
    FROM new_jobs n;
    IF problem IS NOT NULL THEN
        RAISE EXCEPTION 'a new job must be pending with no attempt yet, got %', problem
            USING ERRCODE = 'check_violation', TABLE = 'coding_jobs',
                  CONSTRAINT = 'coding_jobs_insert_check',
                  HINT = 'insert session_id, prompt, priority, max_retries, run_at and '
                         'idempotency_key only; the queue''s functions make every other change';
    END IF;
    IF out_of_window IS NOT NULL THEN
        RAISE EXCEPTION 'run_at must be from 2000-01-01 to a year from now, got %', out_of_window
            USING ERRCODE = 'check_violation', TABLE = 'coding_jobs',
                  CONSTRAINT = 'coding_jobs_run_at_check',
                  HINT = 'schedule a job at most a year ahead; leave run_at out to run it now';
    END IF;
    RETURN NULL;
END
$$;

CREATE OR REPLACE TRIGGER on_job_created
    AFTER INSERT ON public.coding_jobs
    REFERENCING NEW TABLE AS new_jobs
    FOR EACH STATEMENT EXECUTE FUNCTION public.queue_accept_new_jobs();
