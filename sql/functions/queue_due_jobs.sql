-- How many jobs could start now, counted up to limit_param: the ready, due jobs
-- and the heads of sessions whose run_at came due (a claim promotes them). The
-- pod that answers for new jobs asks it when it takes that part over or polls,
-- and wakes that many of its idle workers, at most one per job: a wave of
-- retries coming due at once gets a worker each, a single one gets one.
-- Reads at most 2 × limit_param index entries.
CREATE OR REPLACE FUNCTION public.queue_due_jobs(limit_param integer)
RETURNS integer
LANGUAGE sql STABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
    SELECT least(limit_param,
                 (SELECT count(*) FROM (SELECT 1 FROM public.coding_jobs c
                                        WHERE c.status = 'pending' AND c.waiting_for IS NULL
                                          AND c.run_at <= public.queue_now()
                                        LIMIT greatest(limit_param, 0)) r)
                 + (SELECT count(*) FROM (SELECT 1 FROM public.coding_jobs c
                                          WHERE c.status = 'pending' AND c.waiting_for = 'run_at'
                                            AND c.run_at <= public.queue_now()
                                          LIMIT greatest(limit_param, 0)) h))::integer
$$;
