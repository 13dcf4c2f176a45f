-- The pod's heartbeat: one UPDATE renews every running attempt of the pod,
-- each fenced by its own lease. A row per input job, in order: renewed false
-- means the lease is lost (stop the attempt); cancel_requested true means stop
-- it and record 'cancelled'.
--
-- It never waits for a lock: a job row that another transaction holds locked
-- (a cancel_job or queue_cancel_session left open in a producer's transaction,
-- an operator's SELECT ... FOR UPDATE) is passed over this round and reported
-- busy (renewed NULL). Its lease ages meanwhile, as any lease that cannot be
-- renewed, and the other leases of the pod are renewed. A job whose row stays
-- locked past the fence is stopped by its worker, whose end then waits for the
-- lock like any other write. Were it to wait, one open transaction would stop
-- the renewal of every lease of the pod, and after the fence all its workers
-- would stop their jobs; taking no lock it must wait for, the heartbeat cannot
-- deadlock with a session's cancel either.
CREATE OR REPLACE FUNCTION public.queue_renew_leases(job_ids uuid[], lease_tokens uuid[])
RETURNS TABLE (job_id uuid, renewed boolean, cancel_requested boolean)
LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
#variable_conflict use_column
DECLARE
    ts timestamptz := public.queue_now();
BEGIN
    IF cardinality(job_ids) IS DISTINCT FROM cardinality(lease_tokens) THEN
        RAISE EXCEPTION 'queue_renew_leases: % job ids but % lease tokens',
            cardinality(job_ids), cardinality(lease_tokens)
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    RETURN QUERY
    WITH wanted AS (
        SELECT w.id, w.token, w.n
        FROM unnest(job_ids, lease_tokens) WITH ORDINALITY AS w (id, token, n)),
    -- as the statement's snapshot shows them: the leases still held
    seen AS (
        SELECT w.n FROM public.coding_jobs j JOIN wanted w ON w.id = j.id
        WHERE j.lease_token = w.token AND j.status = 'processing'),
    held AS (
        SELECT j.id FROM public.coding_jobs j JOIN wanted w ON w.id = j.id
        WHERE j.lease_token = w.token AND j.status = 'processing'
        ORDER BY j.id
        FOR NO KEY UPDATE OF j SKIP LOCKED),
    touched AS (
        UPDATE public.coding_jobs j SET heartbeat_at = ts
        FROM held h
        WHERE j.id = h.id
        RETURNING j.id, j.lease_token, j.cancel_requested_at)
    SELECT w.id,
           CASE WHEN r.id IS NOT NULL THEN true
                WHEN s.n IS NOT NULL THEN NULL  -- held, but locked by another transaction
                ELSE false END,
           coalesce(r.cancel_requested_at IS NOT NULL, false)
    FROM wanted w
    LEFT JOIN touched r ON r.id = w.id AND r.lease_token = w.token
    LEFT JOIN seen s ON s.n = w.n
    ORDER BY w.n;
END
$$;
