-- End the attempt holding the lease; the job's new status, NULL when nothing
-- changed. end_reason_param: 'completed', 'released' (given back, not counted;
-- error_param is the human reason), 'cancelled', or a failure's reason (error,
-- deadline_exceeded, worker_exited, heartbeat_expired, lease_lost, ...). A
-- requested cancel turns a release or a failure into 'cancelled'. The worker's
-- one way to end an attempt; queue_finish does the work.
CREATE OR REPLACE FUNCTION public.queue_end_attempt(job_id_param uuid, lease_token_param uuid,
                                                    end_reason_param text,
                                                    error_param text DEFAULT NULL,
                                                    output_param text DEFAULT NULL)
RETURNS text
LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    IF end_reason_param IS NULL OR end_reason_param = '' THEN
        RAISE EXCEPTION 'queue_end_attempt: an end reason is required'
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF lease_token_param IS NULL THEN
        RETURN NULL;
    END IF;
    RETURN public.queue_finish(
        job_id_param, lease_token_param,
        CASE end_reason_param WHEN 'completed' THEN 'complete' WHEN 'released' THEN 'release'
                              WHEN 'cancelled' THEN 'cancel' ELSE 'fail' END,
        end_reason_param, error_param, output_param, NULL::timestamptz);
END
$$;
