-- A change of max_concurrency places the session's pending jobs again (the
-- UPDATE holds the session's row, then the user's is locked: the lock order
-- holds). Jobs that may start now are announced; at the user's limit they wait
-- for the user.
CREATE OR REPLACE FUNCTION public.queue_replace_session_jobs() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    ts timestamptz := public.queue_now();
    announced integer;
    first bigint;
    owner uuid := coalesce(NEW.user_id, '00000000-0000-0000-0000-000000000000'::uuid);
    usr record;
BEGIN
    SELECT * INTO usr FROM public.queue_user_lock(owner);
    WITH ranked AS (
        SELECT o.id, CASE WHEN pg_catalog.row_number() OVER (ORDER BY o.seq)
                               > NEW.max_concurrency THEN 'session'
                          WHEN o.run_at > ts THEN 'run_at'
                          WHEN usr.running >= usr.max_concurrency THEN 'user' END AS placed
        FROM public.coding_jobs o
        WHERE o.session_id = NEW.id AND o.status IN ('pending', 'processing')),
    placed AS (
        UPDATE public.coding_jobs j SET waiting_for = r.placed
        FROM ranked r
        WHERE j.id = r.id AND j.status = 'pending' AND j.waiting_for IS DISTINCT FROM r.placed
        RETURNING j.id, j.session_id, j.priority, j.waiting_for, j.seq)
    SELECT count(pg_notify('new_job', json_build_object(
               'job_id', p.id, 'session_id', p.session_id, 'priority', p.priority)::text)),
           min(p.seq)
    INTO announced, first
    FROM placed p WHERE p.waiting_for IS NULL;
    IF first IS NOT NULL THEN
        PERFORM public.queue_user_mark_ready(owner, first);
    END IF;
    IF usr.max_concurrency IS NOT NULL THEN
        PERFORM public.queue_user_settle(owner, ts);
    END IF;
    RETURN NULL;
END
$$;

CREATE OR REPLACE TRIGGER on_session_concurrency_changed
    AFTER UPDATE OF max_concurrency ON public.coding_sessions
    FOR EACH ROW WHEN (OLD.max_concurrency IS DISTINCT FROM NEW.max_concurrency)
    EXECUTE FUNCTION public.queue_replace_session_jobs();
