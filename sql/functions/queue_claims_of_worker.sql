-- The processing jobs claimed under a worker id, with their attempts: the
-- supervisor gives back those a dead worker claimed but never started (its
-- claim committed while the worker was being killed). No lease token: the
-- supervisor derives its own workers' tokens from its lease key
-- (queue_lease_token); a login that knows another pod's worker ids learns
-- nothing here that ends an attempt.
DROP FUNCTION IF EXISTS public.queue_claims_of_worker(text);

CREATE OR REPLACE FUNCTION public.queue_claims_of_worker(worker_id_param text)
RETURNS TABLE (job_id uuid, attempt integer)
LANGUAGE sql STABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
    SELECT c.id, c.attempt::integer FROM public.coding_jobs c
    WHERE c.status = 'processing' AND c.worker_id = worker_id_param
$$;
