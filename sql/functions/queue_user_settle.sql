-- After a change of a limited user's jobs or limit (the caller holds the user's
-- row, queue_user_lock): while fewer than max_concurrency of the user's jobs
-- run, the user's best free ones (priority, then seq) among those that may
-- start or wait for the user are in the claim's index, and those promoted are
-- announced on new_job; at the limit, none is (the claim's index keeps no job
-- of the user: no claim walks them, no idle worker wakes for them). A job held
-- by a claim right now is left as it is (the claim decides it). Returns the
-- jobs announced. (The order rule: queue_placement.sql.)
CREATE OR REPLACE FUNCTION public.queue_user_settle(user_key_param uuid, now_param timestamptz)
RETURNS integer
LANGUAGE plpgsql VOLATILE SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    usr record;
    free integer;
    announced integer := 0;
BEGIN
    SELECT u.max_concurrency, u.running INTO usr
    FROM public.queue_users u WHERE u.user_key = user_key_param;
    IF NOT FOUND THEN
        RETURN 0;
    END IF;
    -- No limit: every job that waited for one may start (LIMIT NULL is none).
    free := CASE WHEN usr.max_concurrency IS NOT NULL
                 THEN greatest(usr.max_concurrency - usr.running, 0) END;
    IF free = 0 THEN
        UPDATE public.coding_jobs j SET waiting_for = 'user'
        WHERE j.id IN (SELECT c.id FROM public.coding_jobs c
                       WHERE c.user_key = user_key_param AND c.status = 'pending'
                         AND c.waiting_for IS NULL
                       FOR UPDATE SKIP LOCKED);
    ELSE
        WITH candidates AS (
            (SELECT c.id, c.priority, c.seq, c.waiting_for FROM public.coding_jobs c
             WHERE c.user_key = user_key_param AND c.status = 'pending' AND c.waiting_for IS NULL
             ORDER BY c.priority DESC, c.seq LIMIT free)
            UNION ALL
            (SELECT c.id, c.priority, c.seq, c.waiting_for FROM public.coding_jobs c
             WHERE c.user_key = user_key_param AND c.status = 'pending'
               AND c.waiting_for = 'user'
             ORDER BY c.priority DESC, c.seq LIMIT free)),
        best AS (
            SELECT b.id FROM candidates b WHERE b.waiting_for = 'user'
              AND b.id IN (SELECT t.id FROM candidates t ORDER BY t.priority DESC, t.seq
                           LIMIT free)),
        promoted AS (
            UPDATE public.coding_jobs j SET waiting_for = NULL
            FROM best b
            WHERE j.id = b.id AND j.status = 'pending' AND j.waiting_for = 'user'
            RETURNING j.id, j.session_id, j.priority)
        SELECT count(pg_notify('new_job', json_build_object(
                   'job_id', p.id, 'session_id', p.session_id, 'priority', p.priority)::text))
        INTO announced
        FROM promoted p;
    END IF;
    -- Whether the user has jobs to start, for the claim's walk of users (exact
    -- for a limited user: every change of its jobs holds its row).
    UPDATE public.queue_users u
    SET ready = r.first IS NOT NULL,
        turn = CASE WHEN r.first IS NOT NULL AND NOT u.ready AND u.last_started_at IS NULL
                    THEN r.first - 4611686018427387904 ELSE u.turn END
    FROM (SELECT min(c.seq) AS first FROM public.coding_jobs c
          WHERE c.user_key = user_key_param AND c.status = 'pending'
            AND c.waiting_for IS NULL) r
    WHERE u.user_key = user_key_param AND u.ready IS DISTINCT FROM (r.first IS NOT NULL)
      AND (usr.max_concurrency IS NOT NULL OR r.first IS NOT NULL);
    RETURN announced;
END
$$;
