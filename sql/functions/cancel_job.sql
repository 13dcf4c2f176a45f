-- Cancel a job (the phone's button): true when the call changed it; a finished
-- job, or one already being cancelled, is left alone (false). A pending job is
-- cancelled at once, a processing one is marked for its supervisor
-- (queue_cancel_locked). The session's row is locked first, then the job: the
-- lock order of every end of a job (queue_finish.sql).
--
-- Who may cancel which job is decided here, from the database: a caller with
-- the rights of mobvibe_producer (or of this function's owner) any job; any
-- other caller allowed to execute it (Supabase's authenticated: the phone) only
-- a job of a session whose user_id is the user of the request's JWT
-- (queue_phone_user), and false for any other job, its session not even
-- locked. The caller's role is the one it logged in as, or the one it took with
-- SET ROLE (which PostgreSQL lets it take only when it is a member).
CREATE OR REPLACE FUNCTION public.cancel_job(job_id_param uuid)
RETURNS boolean
LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    caller text := CASE WHEN current_setting('role') = 'none' THEN session_user::text
                        ELSE current_setting('role') END;
    sid uuid;
    owner_id uuid;
    mc integer;
BEGIN
    SELECT j.session_id, s.user_id INTO sid, owner_id
    FROM public.coding_jobs j JOIN public.coding_sessions s ON s.id = j.session_id
    WHERE j.id = job_id_param;
    IF NOT (pg_has_role(caller, (SELECT p.proowner FROM pg_catalog.pg_proc p
                                 WHERE p.oid = 'public.cancel_job(uuid)'::regprocedure), 'USAGE')
            OR (EXISTS (SELECT 1 FROM pg_catalog.pg_roles r WHERE r.rolname = 'mobvibe_producer')
                AND pg_has_role(caller, 'mobvibe_producer', 'USAGE'))) THEN
        IF owner_id IS NULL OR owner_id IS DISTINCT FROM public.queue_phone_user() THEN
            RETURN false;
        END IF;
    END IF;
    IF sid IS NULL THEN
        RETURN false;
    END IF;
    SELECT s.max_concurrency INTO mc
    FROM public.coding_sessions s WHERE s.id = sid FOR NO KEY UPDATE;
    IF NOT FOUND THEN
        RETURN false;
    END IF;
    RETURN public.queue_cancel_locked(job_id_param, sid, mc, public.queue_now());
END
$$;
