-- The phone's rows: row security on the queue's tables where the database is
-- set up as Supabase sets one up, the roles anon and authenticated (cluster-wide)
-- and auth.uid() (this database's). Applied after sql/privileges.sql every time
-- that file is, whenever this file's text changes, and whenever that shape
-- appears or goes (the migration runner records which it applied for).
--
-- authenticated, the phone user of the request's JWT (queue_phone_user):
--   reads the rows of coding_sessions, coding_jobs, coding_job_events and
--   coding_job_attempts of the sessions whose user_id is the user, and no
--   other row, nor any lease token; inserts session_id, prompt and
--   idempotency_key (no other column: insufficient_privilege) into its own
--   sessions only; cancels its own jobs with cancel_job (which decides that
--   itself). anon: nothing (no grant, no policy).
-- The queue's own roles keep what sql/privileges.sql grants them, each
-- through a policy of its own that lets it see and write every row; the
-- migrating role (the owner of the SECURITY DEFINER functions) has one too,
-- for a table it does not own (coding_sessions may be another's): an owner
-- bypasses its table's row security, which is enabled, not forced.
--
-- The queue's policies are named queue_*; this file drops them all, then makes
-- them again: a policy of another phase on coding_sessions is left alone.

DO $$
DECLARE
    phone boolean :=
        EXISTS (SELECT 1 FROM pg_catalog.pg_roles r WHERE r.rolname = 'authenticated')
        AND EXISTS (SELECT 1 FROM pg_catalog.pg_roles r WHERE r.rolname = 'anon')
        AND pg_catalog.to_regprocedure('auth.uid()') IS NOT NULL;
    backend boolean :=
        EXISTS (SELECT 1 FROM pg_catalog.pg_roles r WHERE r.rolname = 'mobvibe_operator');
    tables text[] := ARRAY['coding_sessions', 'coding_jobs', 'coding_job_events',
                           'coding_job_attempts'];
    t text;
    p record;
BEGIN
    FOR p IN
        SELECT pol.polname, c.relname FROM pg_catalog.pg_policy pol
        JOIN pg_catalog.pg_class c ON c.oid = pol.polrelid
        WHERE c.relnamespace = 'public'::regnamespace AND c.relname = ANY (tables)
          AND pol.polname LIKE 'queue\_%'
    LOOP
        EXECUTE pg_catalog.format('DROP POLICY %I ON public.%I', p.polname, p.relname);
    END LOOP;

    IF NOT phone THEN
        -- No phone here: the queue's own tables without row security (a
        -- session table's own setting is its phase's).
        ALTER TABLE public.coding_jobs DISABLE ROW LEVEL SECURITY;
        ALTER TABLE public.coding_job_events DISABLE ROW LEVEL SECURITY;
        ALTER TABLE public.coding_job_attempts DISABLE ROW LEVEL SECURITY;
        RETURN;
    END IF;

    FOREACH t IN ARRAY tables LOOP
        EXECUTE pg_catalog.format(
            'CREATE POLICY queue_definer ON public.%I AS PERMISSIVE FOR ALL TO CURRENT_USER '
            'USING (true) WITH CHECK (true)', t);
        IF backend THEN
            EXECUTE pg_catalog.format(
                'CREATE POLICY queue_backend ON public.%I AS PERMISSIVE FOR ALL '
                'TO mobvibe_producer, mobvibe_worker, mobvibe_monitor, mobvibe_operator '
                'USING (true) WITH CHECK (true)', t);
        END IF;
        EXECUTE pg_catalog.format('ALTER TABLE public.%I ENABLE ROW LEVEL SECURITY', t);
    END LOOP;

    -- The phone's rows: (SELECT queue_phone_user()) is computed once per
    -- statement, not per row.
    CREATE POLICY queue_phone ON public.coding_sessions FOR SELECT TO authenticated
        USING (user_id = (SELECT public.queue_phone_user()));
    CREATE POLICY queue_phone ON public.coding_jobs FOR SELECT TO authenticated
        USING (EXISTS (SELECT 1 FROM public.coding_sessions s
                       WHERE s.id = coding_jobs.session_id
                         AND s.user_id = (SELECT public.queue_phone_user())));
    CREATE POLICY queue_phone_submit ON public.coding_jobs FOR INSERT TO authenticated
        WITH CHECK (EXISTS (SELECT 1 FROM public.coding_sessions s
                            WHERE s.id = coding_jobs.session_id
                              AND s.user_id = (SELECT public.queue_phone_user())));
    CREATE POLICY queue_phone ON public.coding_job_events FOR SELECT TO authenticated
        USING (EXISTS (SELECT 1 FROM public.coding_sessions s
                       WHERE s.id = coding_job_events.session_id
                         AND s.user_id = (SELECT public.queue_phone_user())));
    CREATE POLICY queue_phone ON public.coding_job_attempts FOR SELECT TO authenticated
        USING (EXISTS (SELECT 1 FROM public.coding_jobs j
                       JOIN public.coding_sessions s ON s.id = j.session_id
                       WHERE j.id = coding_job_attempts.job_id
                         AND s.user_id = (SELECT public.queue_phone_user())));

    -- What the phone may touch at all; the policies above pick the rows.
    -- sql/privileges.sql revoked everything of the queue's from it before.
    GRANT SELECT ON public.coding_sessions, public.coding_job_events,
                    public.coding_job_attempts TO authenticated;
    EXECUTE pg_catalog.format(
        'GRANT SELECT (%s) ON public.coding_jobs TO authenticated',
        (SELECT pg_catalog.string_agg(pg_catalog.quote_ident(a.attname), ', ' ORDER BY a.attnum)
         FROM pg_catalog.pg_attribute a
         WHERE a.attrelid = 'public.coding_jobs'::regclass AND a.attnum > 0
           AND NOT a.attisdropped AND a.attname <> 'lease_token'));
    GRANT INSERT (session_id, prompt, idempotency_key) ON public.coding_jobs TO authenticated;
    GRANT EXECUTE ON FUNCTION public.cancel_job(uuid), public.queue_phone_user(),
                              public.queue_now(), public.queue_test_clock()
        TO authenticated;
END
$$;
