-- An operator's deliberate requeue of a failed or cancelled job
-- (queue_requeue); false for any other job.
CREATE OR REPLACE FUNCTION public.queue_retry_job(job_id_param uuid)
RETURNS boolean
LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    RETURN public.queue_requeue(job_id_param, ARRAY['failed', 'cancelled']::text[],
                                'retried by an operator'::text);
END
$$;
