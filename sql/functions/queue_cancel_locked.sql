-- Cancel one job of a session whose lock the caller holds: a pending job is
-- cancelled at once and frees its place; a processing one is marked and its
-- supervisor told on job_cancel (or at its next lease renewal). True when the
-- job changed. Executable by the owner alone: cancel_job and
-- queue_cancel_session take the lock.
CREATE OR REPLACE FUNCTION public.queue_cancel_locked(job_id_param uuid, session_id_param uuid,
                                                      max_concurrency_param integer,
                                                      now_param timestamptz)
RETURNS boolean
LANGUAGE plpgsql VOLATILE SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    UPDATE public.coding_jobs j
    SET status = 'cancelled', waiting_for = NULL, completed_at = now_param,
        updated_at = now_param, end_reason = 'cancelled'
    WHERE j.id = job_id_param AND j.status = 'pending';
    IF FOUND THEN
        PERFORM public.queue_promote(session_id_param, max_concurrency_param, now_param);
        RETURN true;
    END IF;
    -- A claim may have taken it meanwhile: the UPDATE above waited for it.
    UPDATE public.coding_jobs j
    SET cancel_requested_at = now_param, updated_at = now_param
    WHERE j.id = job_id_param AND j.status = 'processing' AND j.cancel_requested_at IS NULL;
    IF FOUND THEN
        PERFORM pg_notify('job_cancel', json_build_object(
            'job_id', job_id_param, 'session_id', session_id_param)::text);
        RETURN true;
    END IF;
    RETURN false;
END
$$;
