-- Two probes that read one index entry, not the table.
--
-- The claim's probe for heads whose backoff is over asked EXISTS (... run_at
-- <= ts) with ts a variable: PL/pgSQL's generic plan cannot know that no job is
-- due, guessed a third of the waiting rows were, and scanned the table for the
-- first. With a hundred thousand jobs backed off that was 50 ms of every claim.
-- The earliest run_at, read from coding_jobs_run_at_idx, then compared, costs
-- one index entry whatever the plan.
--
-- The sweep's report of the retries waiting counted every pending job with a
-- future run_at (all pending rows read, each sweep of each pod); the jobs that
-- wait for their run_at are those of coding_jobs_run_at_idx.

CREATE OR REPLACE FUNCTION public.claim_next_job(worker_id_param text DEFAULT NULL)
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
            worker_id = worker_id_param, lease_token = gen_random_uuid(),
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

CREATE OR REPLACE FUNCTION public.queue_sweep(reaper_param text, batch_size integer DEFAULT 500,
                                   prune_batch integer DEFAULT 1000)
RETURNS TABLE (job_id uuid, session_id uuid, will_retry boolean, new_status text,
               pruned_completed integer, pruned_failed integer, pruned_cancelled integer,
               more boolean, waiting_retries bigint, next_retry_at timestamptz,
               heartbeat_timeout interval, retain_completed interval, retain_failed interval)
LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    reaped integer := 0;
    requeued bigint := 0;
    dead bigint := 0;
    pc integer;
    pf integer;
    px integer;
    r record;
BEGIN
    FOR r IN SELECT * FROM public.queue_reap_expired(batch_size) LOOP
        job_id := r.job_id;
        session_id := r.session_id;
        will_retry := r.will_retry;
        new_status := r.new_status;
        reaped := reaped + 1;
        requeued := requeued + (r.will_retry IS TRUE)::integer;
        dead := dead + (r.new_status = 'failed')::integer;
        RETURN NEXT;
    END LOOP;
    pc := public.queue_prune('completed'::text, prune_batch);
    pf := public.queue_prune('failed'::text, prune_batch);
    px := public.queue_prune('cancelled'::text, prune_batch);
    PERFORM public.queue_record_reaper_run(reaper_param, requeued, dead, (pc + pf + px)::bigint);
    job_id := NULL;
    session_id := NULL;
    will_retry := NULL;
    new_status := NULL;
    pruned_completed := pc;
    pruned_failed := pf;
    pruned_cancelled := px;
    more := reaped >= batch_size OR greatest(pc, pf, px) >= prune_batch;
    SELECT count(*), min(j.run_at) INTO waiting_retries, next_retry_at
    FROM public.coding_jobs j
    WHERE j.status = 'pending' AND j.waiting_for = 'run_at' AND j.run_at > public.queue_now();
    SELECT c.heartbeat_timeout, c.retain_completed, c.retain_failed
    INTO heartbeat_timeout, retain_completed, retain_failed
    FROM public.queue_config c;
    RETURN NEXT;
END
$$;
