-- The users the queue knows (those that placed a job), for operators and
-- monitors: the limit in force and whose it is ('own': queue_user_limits,
-- 'default': queue_config.user_max_concurrency, NULL: none), the user's jobs
-- processing, ready to start, and waiting for the user's limit, and its most
-- recent start. Sessions with no user are one row, user_id NULL. waiting_only:
-- only the users with jobs waiting for their limit (the status page).
CREATE OR REPLACE FUNCTION public.queue_user_list(waiting_only boolean DEFAULT false)
RETURNS TABLE (user_id uuid, max_concurrency integer, limit_source text, running bigint,
               ready bigint, waiting bigint, last_started_at timestamptz)
LANGUAGE sql STABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
    WITH counts AS (
        SELECT c.user_key,
               count(*) FILTER (WHERE c.status = 'processing') AS running,
               count(*) FILTER (WHERE c.status = 'pending' AND c.waiting_for IS NULL) AS ready,
               count(*) FILTER (WHERE c.status = 'pending' AND c.waiting_for = 'user') AS waiting
        FROM public.coding_jobs c
        WHERE c.status = 'processing'
           OR c.status = 'pending' AND (c.waiting_for IS NULL OR c.waiting_for = 'user')
        GROUP BY c.user_key)
    SELECT nullif(u.user_key, '00000000-0000-0000-0000-000000000000'::uuid),
           u.max_concurrency,
           CASE WHEN u.max_concurrency IS NULL THEN NULL
                WHEN EXISTS (SELECT 1 FROM public.queue_user_limits l
                             WHERE l.user_id = u.user_key) THEN 'own'
                ELSE 'default' END,
           coalesce(n.running, 0), coalesce(n.ready, 0), coalesce(n.waiting, 0),
           u.last_started_at
    FROM public.queue_users u LEFT JOIN counts n ON n.user_key = u.user_key
    WHERE NOT waiting_only OR n.waiting > 0
    ORDER BY coalesce(n.waiting, 0) DESC, u.user_key
$$;
