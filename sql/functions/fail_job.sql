-- fail_job has two overloads: the worker's, with the lease of the attempt it
-- holds, and the plan's call without one, the operator's path. The worker's has
-- no default for the lease, so that fail_job(id, msg) is never ambiguous. Both
-- record the failure through queue_finish: the retry count goes up, then the
-- job is pending again after the backoff, or dead-lettered (failed) when its
-- attempts are exhausted.

-- The worker's failure: true will retry, false not retried (dead-lettered, or
-- cancelled because a cancel was requested), NULL nothing changed (a stale or
-- NULL lease, a finished job).
CREATE OR REPLACE FUNCTION public.fail_job(job_id_param uuid, error_msg text,
                                           lease_token_param uuid,
                                           reason_param text DEFAULT 'error',
                                           output_param text DEFAULT NULL)
RETURNS boolean
LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    outcome text;
BEGIN
    IF lease_token_param IS NULL THEN
        RETURN NULL;
    END IF;
    outcome := public.queue_finish(job_id_param, lease_token_param, 'fail'::text,
                                   coalesce(reason_param, 'error'), error_msg, output_param,
                                   NULL::timestamptz);
    RETURN CASE WHEN outcome IS NULL THEN NULL ELSE outcome = 'pending' END;
END
$$;

-- The plan's call, the operator's path: a failure of any pending or processing
-- job, atomically, so that concurrent failures each count.
CREATE OR REPLACE FUNCTION public.fail_job(job_id_param uuid, error_msg text)
RETURNS boolean
LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    outcome text;
BEGIN
    outcome := public.queue_finish(job_id_param, NULL::uuid, 'fail'::text, 'error'::text,
                                   error_msg, NULL::text, NULL::timestamptz);
    RETURN CASE WHEN outcome IS NULL THEN NULL ELSE outcome = 'pending' END;
END
$$;
