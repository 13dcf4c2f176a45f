-- Give an unfinished attempt back (at shutdown): pending again at once, the
-- attempt not counted as a failure, in its place in its session; announced on
-- new_job when it may start. The reason is kept in end_reason. false on a
-- stale or NULL lease.
CREATE OR REPLACE FUNCTION public.queue_release_job(
    job_id_param uuid, lease_token_param uuid, reason_param text DEFAULT 'released at shutdown')
RETURNS boolean
LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    IF lease_token_param IS NULL THEN
        RETURN false;
    END IF;
    RETURN public.queue_finish(job_id_param, lease_token_param, 'release'::text,
                               'released'::text, reason_param, NULL::text,
                               NULL::timestamptz) IS NOT NULL;
END
$$;
