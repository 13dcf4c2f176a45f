-- cancel_job on every unfinished job of the session; how many changed. The
-- pending ones at once (none is left to promote), then the processing ones in
-- id order (the order of a pod's queue_renew_leases: no crossed waits). The
-- session's row is locked first, then its user's (the lock order:
-- queue_finish.sql).
CREATE OR REPLACE FUNCTION public.queue_cancel_session(session_id_param uuid)
RETURNS integer
LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    ts timestamptz := public.queue_now();
    cancelled integer;
    asked integer;
    owner uuid;
    usr record;
BEGIN
    SELECT coalesce(s.user_id, '00000000-0000-0000-0000-000000000000'::uuid) INTO owner
    FROM public.coding_sessions s WHERE s.id = session_id_param FOR NO KEY UPDATE;
    IF NOT FOUND THEN
        RETURN 0;
    END IF;
    SELECT * INTO usr FROM public.queue_user_lock(owner);
    WITH done AS (
        UPDATE public.coding_jobs j
        SET status = 'cancelled', waiting_for = NULL, completed_at = ts, updated_at = ts,
            end_reason = 'cancelled'
        WHERE j.session_id = session_id_param AND j.status = 'pending'
        RETURNING j.id)
    SELECT count(*) INTO cancelled FROM done;
    -- A claim may have taken a pending one meanwhile: this statement sees it.
    WITH held AS (
        SELECT j.id FROM public.coding_jobs j
        WHERE j.session_id = session_id_param AND j.status = 'processing'
          AND j.cancel_requested_at IS NULL
        ORDER BY j.id
        FOR NO KEY UPDATE),
    marked AS (
        UPDATE public.coding_jobs j SET cancel_requested_at = ts, updated_at = ts
        FROM held h WHERE j.id = h.id
        RETURNING j.id)
    SELECT count(pg_notify('job_cancel', json_build_object(
               'job_id', m.id, 'session_id', session_id_param)::text))
    INTO asked
    FROM marked m;
    IF cancelled > 0 AND usr.max_concurrency IS NOT NULL THEN
        PERFORM public.queue_user_settle(owner, ts);
    END IF;
    RETURN cancelled + asked;
END
$$;
