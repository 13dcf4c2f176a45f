-- The output of a running attempt so far (the end of its command's stdout),
-- kept with the job while it runs, so that the status pages, `jobs show` and
-- the phone (Realtime on coding_jobs) see what the command has printed; the
-- attempt's end writes the final output all the same. Only the attempt holding
-- the lease writes: false and nothing written when the lease is stale. At most
-- the last 64 KiB, as at the end; the supervisor calls it at a bounded rate
-- (every few seconds, when the output changed).
CREATE OR REPLACE FUNCTION public.queue_set_output(job_id_param uuid, lease_token_param uuid,
                                                   output_param text)
RETURNS boolean
LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    UPDATE public.coding_jobs SET output = public.queue_output_tail(output_param)
    WHERE id = job_id_param AND lease_token = lease_token_param AND status = 'processing';
    RETURN FOUND;
END
$$;
