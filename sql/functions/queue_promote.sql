-- After a job of the session left the unfinished states: the first
-- max_concurrency unfinished jobs that wait for the session may start (or wait
-- for their run_at); each that is due is announced on new_job, so that the end
-- of a prompt wakes a worker for the next. The caller holds the session's lock.
-- (The order rule: queue_placement.sql.)
CREATE OR REPLACE FUNCTION public.queue_promote(session_id_param uuid,
                                                max_concurrency_param integer,
                                                now_param timestamptz)
RETURNS integer
LANGUAGE plpgsql VOLATILE SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    announced integer;
BEGIN
    WITH heads AS (
        SELECT o.id FROM public.coding_jobs o
        WHERE o.session_id = session_id_param AND o.status IN ('pending', 'processing')
        ORDER BY o.seq
        LIMIT max_concurrency_param),
    promoted AS (
        UPDATE public.coding_jobs j
        SET waiting_for = CASE WHEN j.run_at > now_param THEN 'run_at' END
        FROM heads h
        WHERE j.id = h.id AND j.status = 'pending' AND j.waiting_for = 'session'
        RETURNING j.id, j.session_id, j.priority, j.waiting_for)
    SELECT count(pg_notify('new_job', json_build_object(
               'job_id', p.id, 'session_id', p.session_id, 'priority', p.priority)::text))
    INTO announced
    FROM promoted p WHERE p.waiting_for IS NULL;
    RETURN announced;
END
$$;
