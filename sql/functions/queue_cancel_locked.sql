-- Cancel one job of a session whose lock the caller holds: a pending job is
-- cancelled at once and frees its place; a processing one is marked and its
-- supervisor told on job_cancel (or at its next lease renewal). True when the
-- job changed. Executable by the owner alone: cancel_job and
-- queue_cancel_session take the lock. The user's row is locked next (the lock
-- order: queue_finish.sql): a pending job of a limited user leaves a place that
-- the user's next job may take.
CREATE OR REPLACE FUNCTION public.queue_cancel_locked(job_id_param uuid, session_id_param uuid,
                                                      max_concurrency_param integer,
                                                      now_param timestamptz)
RETURNS boolean
LANGUAGE plpgsql VOLATILE SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    owner uuid;
    usr record;
BEGIN
    SELECT coalesce(s.user_id, '00000000-0000-0000-0000-000000000000'::uuid) INTO owner
    FROM public.coding_sessions s WHERE s.id = session_id_param;
    SELECT * INTO usr FROM public.queue_user_lock(owner);
    UPDATE public.coding_jobs j
    SET status = 'cancelled', waiting_for = NULL, completed_at = now_param,
        updated_at = now_param, end_reason = 'cancelled'
    WHERE j.id = job_id_param AND j.status = 'pending';
    IF FOUND THEN
        PERFORM public.queue_promote(session_id_param, max_concurrency_param, now_param);
        IF usr.max_concurrency IS NOT NULL THEN
            PERFORM public.queue_user_settle(owner, now_param);
        END IF;
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
