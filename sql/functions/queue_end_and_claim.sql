-- queue_end_attempt, then claim_next_job, in one round trip and one commit.
-- Always one row; the claim's columns are NULL when nothing was claimed. The
-- lease key: claim_next_job's.
DROP FUNCTION IF EXISTS public.queue_end_and_claim(uuid, uuid, text, text, text, text);

CREATE OR REPLACE FUNCTION public.queue_end_and_claim(job_id_param uuid, lease_token_param uuid,
                                                      end_reason_param text, error_param text,
                                                      output_param text, worker_id_param text,
                                                      lease_key_param uuid DEFAULT NULL)
RETURNS TABLE (ended text, job_id uuid, session_id uuid, prompt text, lease_token uuid,
               attempt integer, retry_count integer, max_retries integer, priority smallint)
LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    outcome text := public.queue_end_attempt(job_id_param, lease_token_param, end_reason_param,
                                             error_param, output_param);
BEGIN
    RETURN QUERY SELECT outcome, c.* FROM public.claim_next_job(worker_id_param, lease_key_param) c;
    IF NOT FOUND THEN
        RETURN QUERY SELECT outcome, NULL::uuid, NULL::uuid, NULL::text, NULL::uuid,
                            NULL::integer, NULL::integer, NULL::integer, NULL::smallint;
    END IF;
END
$$;
