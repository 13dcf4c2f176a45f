-- Notifications of the plan: `new_job` when a job is created, and
-- `job_status_changed` on every status transition, with the plan's payloads.
-- Workers LISTEN on new_job; polling backs them up when a notification is lost.

-- One trigger call per INSERT statement, one notification per new job: a batch
-- enqueue pays one trigger invocation, not one per row.
CREATE OR REPLACE FUNCTION notify_new_job() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('new_job', json_build_object(
        'job_id', n.id, 'session_id', n.session_id, 'priority', n.priority)::text)
    FROM new_jobs n;
    RETURN NULL;
END
$$;

DROP TRIGGER IF EXISTS on_job_created ON coding_jobs;
CREATE TRIGGER on_job_created
    AFTER INSERT ON coding_jobs
    REFERENCING NEW TABLE AS new_jobs
    FOR EACH STATEMENT EXECUTE FUNCTION notify_new_job();

CREATE OR REPLACE FUNCTION notify_job_status_change() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('job_status_changed', json_build_object(
        'job_id', NEW.id, 'session_id', NEW.session_id,
        'old_status', OLD.status, 'new_status', NEW.status)::text);
    RETURN NULL;
END
$$;

-- The WHEN clause keeps heartbeats and other non-status updates from calling
-- the function at all. A session that sets mobvibe.status_notify to off (the
-- supervisor's --no-status-notifications, for deployments where nothing
-- listens) skips it as well: the notifications cost about a third of the
-- server's work per job, and a notifying commit holds a cluster-wide lock
-- through its WAL flush.
DROP TRIGGER IF EXISTS on_job_status_changed ON coding_jobs;
CREATE TRIGGER on_job_status_changed
    AFTER UPDATE OF status ON coding_jobs
    FOR EACH ROW WHEN (OLD.status IS DISTINCT FROM NEW.status
                       AND current_setting('mobvibe.status_notify', true) IS DISTINCT FROM 'off')
    EXECUTE FUNCTION notify_job_status_change();

-- Supabase Realtime: publish row changes where the publication exists.
DO $$
BEGIN
    IF EXISTS (SELECT 1 FROM pg_publication WHERE pubname = 'supabase_realtime')
       AND NOT EXISTS (SELECT 1 FROM pg_publication_tables
                       WHERE pubname = 'supabase_realtime' AND tablename = 'coding_jobs'
                         AND schemaname = current_schema()) THEN
        ALTER PUBLICATION supabase_realtime ADD TABLE coding_jobs;
    END IF;
END
$$;
