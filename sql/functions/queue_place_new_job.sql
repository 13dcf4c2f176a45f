-- A new job takes its place behind the session's unfinished jobs; whatever the
-- INSERT gave waiting_for is overwritten. The session's row is locked first
-- (the lock order: queue_finish.sql), unless this transaction created or updated it: a row
-- whose xmin is ours is invisible to others or already locked by us. SECURITY
-- DEFINER: a producer may not lock sessions itself. The job takes its
-- session's user (user_key); the user's row is locked next (queue_user_lock,
-- which makes it for a new user), and when the job may start by its session's
-- rule a user at its limit makes it wait for the user. (The order rule:
-- queue_placement.sql.)
CREATE OR REPLACE FUNCTION public.queue_place_new_job() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    mc integer;
    owner uuid;
    usr record;
    ours boolean;
    ahead bigint;
    overtaken boolean;
BEGIN
    NEW.waiting_for := NULL;
    IF NEW.status IS DISTINCT FROM 'pending' THEN
        RETURN NEW;  -- refused by queue_accept_new_jobs, with the reason
    END IF;
    -- One statement in the usual case, a session of an earlier transaction.
    SELECT s.max_concurrency, s.user_id INTO mc, owner
    FROM public.coding_sessions s
    WHERE s.id = NEW.session_id
      AND s.xmin IS DISTINCT FROM pg_current_xact_id_if_assigned()::xid
    FOR NO KEY UPDATE;
    ours := NOT FOUND;
    IF ours THEN
        SELECT s.max_concurrency, s.user_id INTO mc, owner
        FROM public.coding_sessions s WHERE s.id = NEW.session_id;
        IF NOT FOUND THEN
            RETURN NEW;  -- no such session: the foreign key refuses the row
        END IF;
    END IF;
    -- The session's last unfinished jobs, at most max_concurrency of them: how
    -- many are ahead, and whether one holds a higher seq than ours. Ours was
    -- drawn before we had the lock, so a job inserted (or requeued) by a
    -- transaction that took the lock first may: submission order is the lock's
    -- order, so we draw again.
    SELECT count(*), coalesce(bool_or(a.seq > NEW.seq), false) INTO ahead, overtaken
    FROM (SELECT o.seq FROM public.coding_jobs o
          WHERE o.session_id = NEW.session_id AND o.status IN ('pending', 'processing')
          ORDER BY o.seq DESC
          LIMIT mc) a;
    IF overtaken THEN
        NEW.seq := nextval(pg_get_serial_sequence('public.coding_jobs', 'seq')::regclass);
    END IF;
    NEW.user_key := coalesce(owner, '00000000-0000-0000-0000-000000000000'::uuid);
    NEW.waiting_for := CASE WHEN ahead >= mc THEN 'session'
                            WHEN NEW.run_at > public.queue_now() THEN 'run_at' END;
    IF NEW.waiting_for IS NULL THEN
        SELECT * INTO usr FROM public.queue_user_lock(NEW.user_key);
        IF usr.running >= usr.max_concurrency THEN
            NEW.waiting_for := 'user';
        ELSE
            PERFORM public.queue_user_mark_ready(NEW.user_key, NEW.seq);
        END IF;
    ELSIF owner IS NOT NULL THEN
        -- The user's row, made now if the user is new: the claim starts a job
        -- only under its user's row, and a job that comes due later is promoted
        -- by queue_promote_due, which makes none.
        PERFORM public.queue_user_lock(NEW.user_key);
    END IF;
    RETURN NEW;
END
$$;

CREATE OR REPLACE TRIGGER on_job_submitted
    BEFORE INSERT ON public.coding_jobs
    FOR EACH ROW EXECUTE FUNCTION public.queue_place_new_job();
