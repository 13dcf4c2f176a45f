-- The plan's statistics (pending, processing, completed and failed counts, the
-- age of the oldest pending job), then the pending jobs whose run_at is still
-- ahead (retries waiting for their backoff, jobs scheduled for later) with the
-- earliest such run_at, the cancelled jobs, what the caps turned away since
-- the queue was made (queue_counters: the metrics' counters), and the pending
-- jobs never attempted whose run_at is ahead (enqueued with a delay) with the
-- earliest run_at of a retry. pending_count includes the jobs that wait for
-- their session.
--
-- Three kinds of pending job are told apart, so that a job scheduled for later
-- raises no alarm:
--   due               run_at has passed: oldest_pending_age is how long the one
--                     due longest has waited since it came due (since it was
--                     submitted, for a job enqueued without a delay), the
--                     alert's "workers do not keep up"
--   a retry waiting   attempted before (attempt > 0), its backoff not over:
--                     waiting_retry_count, next_retry_at
--   delayed           never attempted, scheduled for later: delayed_count
-- (next_run_at: the earliest run_at ahead, of either of the last two.)
--
-- oldest_pending_age clamps run_at to the years a client reads (1 to 9999): a
-- row stored with 'infinity' (before the window of run_at, or by the owner)
-- must not stop the statistics, and every tool reads them.

-- The result gained the delayed jobs: a function's result columns cannot
-- change in place.
DROP FUNCTION IF EXISTS public.get_queue_stats();

CREATE OR REPLACE FUNCTION public.get_queue_stats()
RETURNS TABLE (pending_count bigint, processing_count bigint, completed_count bigint,
               failed_count bigint, oldest_pending_age interval,
               waiting_retry_count bigint, next_run_at timestamptz, cancelled_count bigint,
               events_dropped bigint, event_bytes_dropped bigint, releases_counted bigint,
               delayed_count bigint, next_retry_at timestamptz)
LANGUAGE sql STABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
    SELECT
        (SELECT count(*) FROM public.coding_jobs WHERE status = 'pending'),
        (SELECT count(*) FROM public.coding_jobs WHERE status = 'processing'),
        (SELECT count(*) FROM public.coding_jobs WHERE status = 'completed'),
        (SELECT count(*) FROM public.coding_jobs WHERE status = 'failed'),
        -- greatest() passes over a NULL: no due job is no age, not two thousand years
        CASE WHEN p.due_since IS NOT NULL THEN
            public.queue_now() - least(greatest(p.due_since, '0001-01-01 00:00:00+00'::timestamptz),
                                       '9999-12-31 23:59:59+00'::timestamptz)
        END,
        p.retries, p.next_run, (SELECT count(*) FROM public.coding_jobs WHERE status = 'cancelled'),
        q.events_dropped, q.event_bytes_dropped, q.releases_counted,
        p.delayed, p.next_retry
    FROM public.queue_counters q,
         -- one pass over the pending rows for every figure of their run_at
         (SELECT min(j.run_at) FILTER (WHERE j.run_at <= n.now) AS due_since,
                 count(*) FILTER (WHERE j.run_at > n.now AND j.attempt > 0) AS retries,
                 min(j.run_at) FILTER (WHERE j.run_at > n.now AND j.attempt > 0) AS next_retry,
                 count(*) FILTER (WHERE j.run_at > n.now AND j.attempt = 0) AS delayed,
                 min(j.run_at) FILTER (WHERE j.run_at > n.now) AS next_run
          FROM (SELECT public.queue_now() AS now) n, public.coding_jobs j
          WHERE j.status = 'pending') p
$$;
