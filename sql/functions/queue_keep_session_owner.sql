-- A session's owner is set when it is made: each of its jobs carries it
-- (coding_jobs.user_key) and counts in that user's limit, so it may change only
-- while the session has no unfinished job. (The order rule: queue_placement.sql.)
CREATE OR REPLACE FUNCTION public.queue_keep_session_owner() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    IF EXISTS (SELECT 1 FROM public.coding_jobs j
               WHERE j.session_id = NEW.id AND j.status IN ('pending', 'processing')) THEN
        RAISE EXCEPTION 'session % has unfinished jobs: its user cannot change', NEW.id
            USING ERRCODE = 'object_not_in_prerequisite_state',
                  HINT = 'a session''s user is set when it is made; wait for its jobs, or '
                         'cancel them (cancel --session)';
    END IF;
    UPDATE public.coding_jobs j
    SET user_key = coalesce(NEW.user_id, '00000000-0000-0000-0000-000000000000'::uuid)
    WHERE j.session_id = NEW.id;
    RETURN NEW;
END
$$;

CREATE OR REPLACE TRIGGER on_session_owner_changed
    BEFORE UPDATE OF user_id ON public.coding_sessions
    FOR EACH ROW WHEN (OLD.user_id IS DISTINCT FROM NEW.user_id)
    EXECUTE FUNCTION public.queue_keep_session_owner();
