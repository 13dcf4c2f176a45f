-- The plan's statistics (pending, processing, completed and failed counts, the
-- age of the oldest pending job), then the pending jobs whose run_at is still
-- ahead (retries waiting for their backoff, jobs scheduled for later) with the
-- earliest such run_at, and the cancelled jobs. pending_count includes the jobs
-- that wait for their session.
CREATE OR REPLACE FUNCTION public.get_queue_stats()
RETURNS TABLE (pending_count bigint, processing_count bigint, completed_count bigint,
               failed_count bigint, oldest_pending_age interval,
               waiting_retry_count bigint, next_run_at timestamptz, cancelled_count bigint)
LANGUAGE sql STABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
    SELECT
        (SELECT count(*) FROM public.coding_jobs WHERE status = 'pending'),
        (SELECT count(*) FROM public.coding_jobs WHERE status = 'processing'),
        (SELECT count(*) FROM public.coding_jobs WHERE status = 'completed'),
        (SELECT count(*) FROM public.coding_jobs WHERE status = 'failed'),
        (SELECT public.queue_now() - min(created_at) FROM public.coding_jobs
         WHERE status = 'pending'),
        (SELECT count(*) FROM public.coding_jobs
         WHERE status = 'pending' AND run_at > public.queue_now()),
        (SELECT min(run_at) FROM public.coding_jobs
         WHERE status = 'pending' AND run_at > public.queue_now()),
        (SELECT count(*) FROM public.coding_jobs WHERE status = 'cancelled')
$$;
