-- The plan's statistics (pending, processing, completed and failed counts, the
-- age of the oldest pending job), then the pending jobs whose run_at is still
-- ahead (retries waiting for their backoff, jobs scheduled for later) with the
-- earliest such run_at, the cancelled jobs, and what the caps turned away since
-- the queue was made (queue_counters: the metrics' counters). pending_count
-- includes the jobs that wait for their session.
--
-- oldest_pending_age clamps created_at to the years a client reads (1 to 9999):
-- a row stored with 'infinity' (before the window of run_at, or by the owner)
-- must not stop the statistics, and every tool reads them.

-- The result gained the caps' totals: a function's result columns cannot change
-- in place.
DROP FUNCTION IF EXISTS public.get_queue_stats();

CREATE OR REPLACE FUNCTION public.get_queue_stats()
RETURNS TABLE (pending_count bigint, processing_count bigint, completed_count bigint,
               failed_count bigint, oldest_pending_age interval,
               waiting_retry_count bigint, next_run_at timestamptz, cancelled_count bigint,
               events_dropped bigint, event_bytes_dropped bigint, releases_counted bigint)
LANGUAGE sql STABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
    SELECT
        (SELECT count(*) FROM public.coding_jobs WHERE status = 'pending'),
        (SELECT count(*) FROM public.coding_jobs WHERE status = 'processing'),
        (SELECT count(*) FROM public.coding_jobs WHERE status = 'completed'),
        (SELECT count(*) FROM public.coding_jobs WHERE status = 'failed'),
        (SELECT public.queue_now() - least(greatest(o.t, '0001-01-01 00:00:00+00'::timestamptz),
                                           '9999-12-31 23:59:59+00'::timestamptz)
         FROM (SELECT min(created_at) AS t FROM public.coding_jobs WHERE status = 'pending') o
         WHERE o.t IS NOT NULL),
        (SELECT count(*) FROM public.coding_jobs
         WHERE status = 'pending' AND run_at > public.queue_now()),
        (SELECT min(run_at) FROM public.coding_jobs
         WHERE status = 'pending' AND run_at > public.queue_now()),
        (SELECT count(*) FROM public.coding_jobs WHERE status = 'cancelled'),
        q.events_dropped, q.event_bytes_dropped, q.releases_counted
    FROM public.queue_counters q
$$;
