-- The claim's first step when a head waiting for its run_at came due: at most a
-- thousand of them may start (one claim never carries a whole wave of retries;
-- the next claims promote the rest), and their users join the claim's walk.
-- A user's row that another transaction holds is passed over (the claim waits
-- for nothing): that user's jobs still start, first by priority and seq, and
-- the user is back in the walk at its next start. A user at its limit is
-- settled by the claim that meets its job. (The order rule: queue_placement.sql.)
CREATE OR REPLACE FUNCTION public.queue_promote_due(now_param timestamptz)
RETURNS void
LANGUAGE plpgsql VOLATILE SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    WITH promoted AS (
        UPDATE public.coding_jobs j SET waiting_for = NULL
        WHERE j.id IN (SELECT c.id FROM public.coding_jobs c
                       WHERE c.status = 'pending' AND c.waiting_for = 'run_at'
                         AND c.run_at <= now_param
                       ORDER BY c.run_at
                       LIMIT 1000
                       FOR UPDATE SKIP LOCKED)
        RETURNING j.user_key, j.seq),
    firsts AS (
        SELECT p.user_key, min(p.seq) AS seq FROM promoted p GROUP BY p.user_key)
    UPDATE public.queue_users u
    SET ready = true,
        turn = CASE WHEN u.last_started_at IS NULL THEN f.seq - 4611686018427387904
                    ELSE u.turn END
    FROM firsts f
    WHERE u.user_key = f.user_key AND NOT u.ready
      AND u.user_key IN (SELECT x.user_key FROM public.queue_users x
                         WHERE x.user_key IN (SELECT g.user_key FROM firsts g) AND NOT x.ready
                         FOR NO KEY UPDATE SKIP LOCKED);
END
$$;
