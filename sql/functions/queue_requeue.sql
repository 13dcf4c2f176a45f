-- Submit a finished job again, deliberately: pending, due now, retry count and
-- releases reset, any cancel forgotten, a new seq (the back of its session), placed.
-- The session is active again once none of its jobs is failed. The session's
-- row is locked first, then its user's (the lock order: queue_finish.sql): at
-- its limit, a job that may start by its session waits for its user. Executable by the
-- owner alone: queue_requeue_failed and queue_retry_job say which jobs.
CREATE OR REPLACE FUNCTION public.queue_requeue(job_id_param uuid, statuses text[],
                                                reason_param text)
RETURNS boolean
LANGUAGE plpgsql VOLATILE SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    ts timestamptz := public.queue_now();
    sid uuid;
    mc integer;
    ahead bigint;
    requeued record;
    owner uuid;
    usr record;
BEGIN
    SELECT j.session_id INTO sid FROM public.coding_jobs j WHERE j.id = job_id_param;
    IF NOT FOUND THEN
        RETURN false;
    END IF;
    SELECT s.max_concurrency,
           coalesce(s.user_id, '00000000-0000-0000-0000-000000000000'::uuid)
    INTO mc, owner
    FROM public.coding_sessions s WHERE s.id = sid FOR NO KEY UPDATE;
    SELECT * INTO usr FROM public.queue_user_lock(owner);
    -- Every unfinished job of the session is ahead of it now.
    SELECT count(*) INTO ahead
    FROM (SELECT 1 FROM public.coding_jobs o
          WHERE o.session_id = sid AND o.status IN ('pending', 'processing')
          LIMIT mc) a;
    UPDATE public.coding_jobs j
    SET status = 'pending', retry_count = 0, release_count = 0, run_at = ts,
        completed_at = NULL, cancel_requested_at = NULL, heartbeat_at = NULL, seq = DEFAULT,
        waiting_for = CASE WHEN ahead >= mc THEN 'session'
                           WHEN usr.running >= usr.max_concurrency THEN 'user' END,
        end_reason = reason_param, updated_at = ts
    WHERE j.id = job_id_param AND j.status = ANY (statuses)
    RETURNING j.id, j.session_id, j.priority, j.waiting_for, j.seq INTO requeued;
    IF NOT FOUND THEN
        RETURN false;
    END IF;
    UPDATE public.coding_sessions s
    SET status = 'active', error_message = NULL, updated_at = ts
    WHERE s.id = sid AND s.status = 'failed'
      AND NOT EXISTS (SELECT 1 FROM public.coding_jobs j
                      WHERE j.session_id = s.id AND j.status = 'failed');
    IF requeued.waiting_for IS NULL THEN
        PERFORM public.queue_user_mark_ready(owner, requeued.seq);
        PERFORM pg_notify('new_job', json_build_object('job_id', requeued.id,
            'session_id', requeued.session_id, 'priority', requeued.priority)::text);
    END IF;
    RETURN true;
END
$$;
