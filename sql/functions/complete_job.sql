-- complete_job has two overloads: the worker's, with the lease of the attempt
-- it holds, and the plan's call without one, the operator's path. The worker's
-- has no default for the lease, so that complete_job(id) is never ambiguous.
-- Both end the attempt through queue_finish.

-- The worker's completion: only the attempt holding the lease (true also when
-- that same attempt already completed it: a retried commit). A NULL lease
-- completes nothing. Completed also when a cancel was requested: the work is done.
CREATE OR REPLACE FUNCTION public.complete_job(job_id_param uuid, lease_token_param uuid,
                                               output_param text DEFAULT NULL)
RETURNS boolean
LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    IF lease_token_param IS NULL THEN
        RETURN false;
    END IF;
    IF public.queue_finish(job_id_param, lease_token_param, 'complete'::text, 'completed'::text,
                           NULL::text, output_param, NULL::timestamptz) IS NOT NULL THEN
        RETURN true;
    END IF;
    RETURN EXISTS (SELECT 1 FROM public.coding_jobs
                   WHERE id = job_id_param AND lease_token = lease_token_param
                     AND status = 'completed');
END
$$;

-- The plan's call, the operator's path: completes any pending or processing
-- job (closing its open attempt), never a finished one.
CREATE OR REPLACE FUNCTION public.complete_job(job_id_param uuid)
RETURNS boolean
LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    RETURN public.queue_finish(job_id_param, NULL::uuid, 'complete'::text, 'completed'::text,
                               NULL::text, NULL::text, NULL::timestamptz) IS NOT NULL;
END
$$;
