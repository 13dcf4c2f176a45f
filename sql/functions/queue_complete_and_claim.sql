-- complete_job with the lease, then claim_next_job, in one round trip and one
-- commit. Always one row: completed is false when the lease was lost (nothing
-- was completed; the claim happens either way), the claim's columns are NULL
-- when nothing was claimed.
CREATE OR REPLACE FUNCTION public.queue_complete_and_claim(job_id_param uuid,
                                                           lease_token_param uuid,
                                                           worker_id_param text DEFAULT NULL)
RETURNS TABLE (completed boolean, job_id uuid, session_id uuid, prompt text, lease_token uuid,
               attempt integer, retry_count integer, max_retries integer, priority smallint)
LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    ok boolean := public.complete_job(job_id_param, lease_token_param, NULL::text);
BEGIN
    RETURN QUERY SELECT ok, c.* FROM public.claim_next_job(worker_id_param) c;
    IF NOT FOUND THEN
        RETURN QUERY SELECT ok, NULL::uuid, NULL::uuid, NULL::text, NULL::uuid,
                            NULL::integer, NULL::integer, NULL::integer, NULL::smallint;
    END IF;
END
$$;
