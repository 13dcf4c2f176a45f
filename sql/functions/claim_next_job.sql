-- Claim the job that may start next: promote the heads of sessions whose
-- run_at came due, then take the first ready, due job by priority, then
-- submission order (seq), and open its attempt's row in coding_job_attempts.
-- The lease token it returns fences every later write of this attempt. SKIP
-- LOCKED throughout: concurrent claimers never wait on each other and never get
-- the same job, and another claimer promoting the same heads is as good.
--
-- The probe for heads that came due reads the earliest run_at of
-- coding_jobs_run_at_idx, then compares it: one index entry, whatever the plan.
-- An EXISTS (... run_at <= ts) with ts a variable let PL/pgSQL's generic plan
-- guess that a third of the waiting rows were due and scan the table for the
-- first: 50 ms of every claim with a hundred thousand jobs backed off.
--
-- PL/pgSQL rather than SQL, as every hot function (the claim, the ends of an
-- attempt, the heartbeat): a SQL function's body is parsed and planned again at
-- every call (before PostgreSQL 18), a PL/pgSQL one's plans are cached per
-- session; that was three quarters of the server's CPU per job.
--
-- lease_key_param: a supervisor's secret; the lease token is then derived from
-- it (queue_lease_token), so that the supervisor can end the attempt of a
-- worker that died before telling it, without any role reading a token from
-- the table. Without a key, the token is random: the caller alone knows it.
DROP FUNCTION IF EXISTS public.claim_next_job(text);

CREATE OR REPLACE FUNCTION public.claim_next_job(worker_id_param text DEFAULT NULL,
                                                 lease_key_param uuid DEFAULT NULL)
RETURNS TABLE (job_id uuid, session_id uuid, prompt text, lease_token uuid,
               attempt integer, retry_count integer, max_retries integer, priority smallint)
LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
#variable_conflict use_column
DECLARE
    ts timestamptz := public.queue_now();
BEGIN
    IF (SELECT c.run_at FROM public.coding_jobs c
        WHERE c.status = 'pending' AND c.waiting_for = 'run_at'
        ORDER BY c.run_at
        LIMIT 1) <= ts THEN
        -- At most a thousand at a time: one claim never carries a whole wave
        -- of retries; the next claims promote the rest.
        UPDATE public.coding_jobs j SET waiting_for = NULL
        WHERE j.id IN (SELECT c.id FROM public.coding_jobs c
                       WHERE c.status = 'pending' AND c.waiting_for = 'run_at' AND c.run_at <= ts
                       ORDER BY c.run_at
                       LIMIT 1000
                       FOR UPDATE SKIP LOCKED);
    END IF;
    RETURN QUERY
    WITH claimed AS (
        UPDATE public.coding_jobs j
        SET status = 'processing', started_at = ts, updated_at = ts, heartbeat_at = ts,
            worker_id = worker_id_param, lease_token = coalesce(public.queue_lease_token(lease_key_param, j.id, j.attempt + 1),
                                        gen_random_uuid()),
            attempt = j.attempt + 1, end_reason = NULL
        WHERE j.id = (
            SELECT c.id FROM public.coding_jobs c
            WHERE c.status = 'pending' AND c.waiting_for IS NULL AND c.run_at <= ts
            ORDER BY c.priority DESC, c.seq
            LIMIT 1
            FOR UPDATE SKIP LOCKED)
        RETURNING j.id, j.session_id, j.prompt, j.lease_token, j.attempt, j.retry_count,
                  j.max_retries, j.priority),
    recorded AS (
        INSERT INTO public.coding_job_attempts (job_id, attempt, worker_id, started_at)
        SELECT c.id, c.attempt, worker_id_param, ts FROM claimed c)
    -- The casts: a table made from the plan's schema has integer priorities.
    SELECT c.id, c.session_id, c.prompt, c.lease_token, c.attempt::integer,
           c.retry_count::integer, c.max_retries::integer, c.priority::smallint
    FROM claimed c;
END
$$;
