-- One statement per sweep of the reaper. An idle pod runs the embedded reaper
-- every few seconds: seven statements a sweep (settings, reap, three prunes,
-- the retries waiting, the run's record) were most of what an idle pod sent the
-- shared database. This does all of it in one call, one bounded batch of each;
-- `more` says a batch was full and the caller should call again.
--
-- Its rows: one per expired attempt it looked at (as queue_reap_expired
-- returns them: will_retry and new_status NULL when it passed one over), then
-- one row with job_id NULL that carries the rest. The retries waiting are the
-- jobs of coding_jobs_run_at_idx (waiting_for = 'run_at'), not every pending
-- row with a future run_at: read from the index, not the table; a job never
-- attempted (enqueued with a delay) waits for no retry.
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
    -- attempt in FILTER, not in WHERE: the scan stays the index's whatever the plan
    SELECT count(*) FILTER (WHERE j.attempt > 0), min(j.run_at) FILTER (WHERE j.attempt > 0)
    INTO waiting_retries, next_retry_at
    FROM public.coding_jobs j
    WHERE j.status = 'pending' AND j.waiting_for = 'run_at' AND j.run_at > public.queue_now();
    SELECT c.heartbeat_timeout, c.retain_completed, c.retain_failed
    INTO heartbeat_timeout, retain_completed, retain_failed
    FROM public.queue_config c;
    RETURN NEXT;
END
$$;
