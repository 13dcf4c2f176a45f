-- Delete up to batch_size finished jobs in `status_param` older than the
-- configured retention (cancelled jobs: retain_completed), with their attempts
-- and events. Called in a loop, one short transaction per batch. The limits are
-- the ones operators configured: whoever calls, no young job is deleted.
CREATE OR REPLACE FUNCTION public.queue_prune(status_param text, batch_size integer DEFAULT 1000)
RETURNS integer
LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    retention interval;
    deleted integer;
BEGIN
    IF status_param IS NULL OR status_param NOT IN ('completed', 'failed', 'cancelled') THEN
        RAISE EXCEPTION 'queue_prune: status must be completed, failed or cancelled, got %',
            status_param
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    SELECT CASE status_param WHEN 'failed' THEN c.retain_failed ELSE c.retain_completed END
    INTO retention FROM public.queue_config c;
    IF retention IS NULL THEN
        RETURN 0;  -- kept forever
    END IF;
    DELETE FROM public.coding_jobs
    WHERE id IN (SELECT c.id FROM public.coding_jobs c
                 WHERE c.status = status_param AND c.completed_at < public.queue_now() - retention
                 ORDER BY c.completed_at
                 LIMIT greatest(batch_size, 0)
                 FOR UPDATE SKIP LOCKED);
    GET DIAGNOSTICS deleted = ROW_COUNT;
    RETURN deleted;
END
$$;
