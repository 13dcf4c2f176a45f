-- Bring a dead-lettered job back (queue_requeue): pending now, retry count
-- reset, at the back of its session. The last error stays on the row until
-- the next attempt ends. false when the job is not failed.
CREATE OR REPLACE FUNCTION public.queue_requeue_failed(job_id_param uuid)
RETURNS boolean
LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    RETURN public.queue_requeue(job_id_param, ARRAY['failed']::text[],
                                'requeued from dead letters'::text);
END
$$;
