-- Mark a session failed when one of its jobs is dead-lettered, whoever did it
-- (fail_job, the reaper, or an operator's UPDATE).
CREATE OR REPLACE FUNCTION public.queue_fail_session() RETURNS trigger
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    UPDATE public.coding_sessions
    SET status = 'failed', error_message = NEW.error_message, updated_at = public.queue_now()
    WHERE id = NEW.session_id;
    RETURN NULL;
END
$$;

CREATE OR REPLACE TRIGGER on_job_dead_lettered
    AFTER UPDATE OF status ON public.coding_jobs
    FOR EACH ROW WHEN (NEW.status = 'failed' AND OLD.status IS DISTINCT FROM 'failed')
    EXECUTE FUNCTION public.queue_fail_session();
