-- An operator's deliberate purge of the dead letters: up to batch_size jobs
-- that failed longer ago than `older_than` (0: all of them), whatever the
-- retention. Called in a loop, one short transaction per batch.
CREATE OR REPLACE FUNCTION public.queue_purge_failed(older_than interval,
                                                     batch_size integer DEFAULT 1000)
RETURNS integer
LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    deleted integer;
BEGIN
    DELETE FROM public.coding_jobs
    WHERE id IN (SELECT c.id FROM public.coding_jobs c
                 WHERE c.status = 'failed' AND c.completed_at <= public.queue_now() - older_than
                 ORDER BY c.completed_at
                 LIMIT greatest(batch_size, 0)
                 FOR UPDATE SKIP LOCKED);
    GET DIAGNOSTICS deleted = ROW_COUNT;
    RETURN deleted;
END
$$;
