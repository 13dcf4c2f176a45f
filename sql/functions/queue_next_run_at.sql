-- The earliest run_at of a job that may start or waits only for its run_at
-- (in the past when one is due now); jobs waiting for their session are left
-- out, so that an idle worker never wakes for them.
CREATE OR REPLACE FUNCTION public.queue_next_run_at()
RETURNS timestamptz
LANGUAGE sql STABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
    SELECT least(
        (SELECT min(c.run_at) FROM public.coding_jobs c
         WHERE c.status = 'pending' AND c.waiting_for IS NULL),
        (SELECT min(c.run_at) FROM public.coding_jobs c
         WHERE c.status = 'pending' AND c.waiting_for = 'run_at'))
$$;
