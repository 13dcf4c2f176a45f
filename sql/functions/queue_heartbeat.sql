-- Renew the lease of one running attempt. false: the lease is lost, stop the
-- job. (The supervisor renews a whole pod's leases at once with
-- queue_renew_leases.)
CREATE OR REPLACE FUNCTION public.queue_heartbeat(job_id_param uuid, lease_token_param uuid)
RETURNS boolean
LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    UPDATE public.coding_jobs SET heartbeat_at = public.queue_now()
    WHERE id = job_id_param AND lease_token = lease_token_param AND status = 'processing';
    RETURN FOUND;
END
$$;
