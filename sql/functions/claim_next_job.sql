-- Claim the job that may start next: promote the heads of sessions whose
-- run_at came due, then take the first ready, due job by priority, then the
-- user whose most recent start is the oldest, then submission order (seq), and
-- open its attempt's row in coding_job_attempts. The lease token it returns
-- fences every later write of this attempt. SKIP LOCKED throughout, jobs and
-- users' rows: concurrent claimers never wait on each other and never get the
-- same job, and another claimer promoting the same heads is as good.
--
-- The turn, without walking the jobs that wait: the first ready job by
-- priority and seq (coding_jobs_ready_idx) names the priority and a user U0;
-- only the users before U0 in turn order that may have ready jobs
-- (queue_users_turn_idx, ready) are read, each by one probe of
-- coding_jobs_user_ready_idx at that priority; the first that has one gives
-- its first job by seq, else U0 does. A user named ready with nothing ready is
-- cleared on the way. A user with a limit is locked (SKIP LOCKED: busy, it is
-- passed over) and counted; the claim that reaches its limit takes the user's
-- other ready jobs out of the index (waiting_for 'user'). Every other user's
-- row is only share-locked against a change of its limit, and its turn is
-- written SKIP LOCKED: concurrent claims of one user (every job of sessions
-- with no user is one user's) never queue behind each other's commits.
--
-- The probe for heads that came due reads the earliest run_at of
-- coding_jobs_run_at_idx, then compares it: one index entry, whatever the plan.
-- An EXISTS (... run_at <= ts) with ts a variable let PL/pgSQL's generic plan
-- guess that a third of the waiting rows were due and scan the table for the
-- first: 50 ms of every claim with a hundred thousand jobs backed off.
--
-- PL/pgSQL rather than SQL, as every hot function (the claim, the ends of an
-- attempt, the heartbeat): a SQL function's body is parsed and planned again at
-- every call (before PostgreSQL 18), a PL/pgSQL one's plans are cached per
-- session; that was three quarters of the server's CPU per job.
CREATE OR REPLACE FUNCTION public.claim_next_job(worker_id_param text DEFAULT NULL)
RETURNS TABLE (job_id uuid, session_id uuid, prompt text, lease_token uuid,
               attempt integer, retry_count integer, max_retries integer, priority smallint)
LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
#variable_conflict use_column
DECLARE
    ts timestamptz := public.queue_now();
    passed uuid[] := '{}';
    pick record;
BEGIN
    IF (SELECT c.run_at FROM public.coding_jobs c
        WHERE c.status = 'pending' AND c.waiting_for = 'run_at'
        ORDER BY c.run_at
        LIMIT 1) <= ts THEN
        PERFORM public.queue_promote_due(ts);
    END IF;
    -- A few rounds at most: each passes over a user (busy, at its limit, or
    -- its jobs taken by other claims meanwhile).
    FOR round IN 1..8 LOOP
        SELECT * INTO pick FROM public.queue_pick(ts, passed);
        IF pick.job IS NULL THEN
            RETURN;
        END IF;
        IF pick.user_ok THEN
            RETURN QUERY
            WITH claimed AS (
                UPDATE public.coding_jobs j
                SET status = 'processing', started_at = ts, updated_at = ts, heartbeat_at = ts,
                    worker_id = worker_id_param, lease_token = gen_random_uuid(),
                    attempt = j.attempt + 1, end_reason = NULL
                WHERE j.id = pick.job
                RETURNING j.id, j.session_id, j.prompt, j.lease_token, j.attempt,
                          j.retry_count, j.max_retries, j.priority),
            recorded AS (
                INSERT INTO public.coding_job_attempts (job_id, attempt, worker_id, started_at)
                SELECT c.id, c.attempt, worker_id_param, ts FROM claimed c)
            -- The casts: a table made from the plan's schema has integer priorities.
            SELECT c.id, c.session_id, c.prompt, c.lease_token, c.attempt::integer,
                   c.retry_count::integer, c.max_retries::integer, c.priority::smallint
            FROM claimed c;
            PERFORM public.queue_user_started(pick.user_key, pick.turn_ours, ts);
            RETURN;
        END IF;
        passed := passed || pick.user_key;
    END LOOP;
END
$$;
