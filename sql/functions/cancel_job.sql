-- Cancel a job (the phone's button): true when the call changed it; a finished
-- job, or one already being cancelled, is left alone (false). A pending job is
-- cancelled at once, a processing one is marked for its supervisor
-- (queue_cancel_locked). The session's row is locked first, then the job: the
-- lock order of every end of a job (queue_finish.sql).
CREATE OR REPLACE FUNCTION public.cancel_job(job_id_param uuid)
RETURNS boolean
LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    sid uuid;
    mc integer;
BEGIN
    SELECT j.session_id INTO sid FROM public.coding_jobs j WHERE j.id = job_id_param;
    IF NOT FOUND THEN
        RETURN false;
    END IF;
    SELECT s.max_concurrency INTO mc
    FROM public.coding_sessions s WHERE s.id = sid FOR NO KEY UPDATE;
    IF NOT FOUND THEN
        RETURN false;
    END IF;
    RETURN public.queue_cancel_locked(job_id_param, sid, mc, public.queue_now());
END
$$;
