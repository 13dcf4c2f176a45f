-- job_status_changed, with the plan's payload, on every change of a job's
-- status.
CREATE OR REPLACE FUNCTION public.notify_job_status_change() RETURNS trigger
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
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
CREATE OR REPLACE TRIGGER on_job_status_changed
    AFTER UPDATE OF status ON public.coding_jobs
    FOR EACH ROW WHEN (OLD.status IS DISTINCT FROM NEW.status
                       AND current_setting('mobvibe.status_notify', true) IS DISTINCT FROM 'off')
    EXECUTE FUNCTION public.notify_job_status_change();
