-- The processing jobs claimed under a worker id, with their leases: the
-- supervisor gives back those a dead worker claimed but never started (its
-- claim committed while the worker was being killed).
CREATE OR REPLACE FUNCTION public.queue_claims_of_worker(worker_id_param text)
RETURNS TABLE (job_id uuid, lease_token uuid)
LANGUAGE sql STABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
    SELECT c.id, c.lease_token FROM public.coding_jobs c
    WHERE c.status = 'processing' AND c.worker_id = worker_id_param
$$;
