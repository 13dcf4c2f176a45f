-- After a job of the session left the unfinished states: the first
-- max_concurrency unfinished jobs that wait for the session may start (or wait
-- for their run_at, or for their user when the user's limit is reached); each
-- that may start is announced on new_job, so that the end of a prompt wakes a
-- worker for the next. The caller holds the session's lock, then the user's
-- (queue_user_lock). (The order rule: queue_placement.sql.)
CREATE OR REPLACE FUNCTION public.queue_promote(session_id_param uuid,
                                                max_concurrency_param integer,
                                                now_param timestamptz)
RETURNS integer
LANGUAGE plpgsql VOLATILE SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    usr uuid;
    at_limit boolean;
    announced integer;
    first bigint;
BEGIN
    SELECT coalesce(s.user_id, '00000000-0000-0000-0000-000000000000'::uuid) INTO usr
    FROM public.coding_sessions s WHERE s.id = session_id_param;
    SELECT coalesce(u.running >= u.max_concurrency, false) INTO at_limit
    FROM public.queue_users u WHERE u.user_key = usr;
    WITH heads AS (
        SELECT o.id FROM public.coding_jobs o
        WHERE o.session_id = session_id_param AND o.status IN ('pending', 'processing')
        ORDER BY o.seq
        LIMIT max_concurrency_param),
    promoted AS (
        UPDATE public.coding_jobs j
        SET waiting_for = CASE WHEN j.run_at > now_param THEN 'run_at'
                               WHEN at_limit THEN 'user' END
        FROM heads h
        WHERE j.id = h.id AND j.status = 'pending' AND j.waiting_for = 'session'
        RETURNING j.id, j.session_id, j.priority, j.waiting_for, j.seq)
    SELECT count(pg_notify('new_job', json_build_object(
               'job_id', p.id, 'session_id', p.session_id, 'priority', p.priority)::text)),
           min(p.seq)
    INTO announced, first
    FROM promoted p WHERE p.waiting_for IS NULL;
    IF first IS NOT NULL THEN
        PERFORM public.queue_user_mark_ready(usr, first);
    END IF;
    RETURN announced;
END
$$;
