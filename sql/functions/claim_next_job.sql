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
-- coding_jobs_user_idx at that priority; the first that has one gives its
-- first job by seq, else U0's job is the one. A user named ready with nothing
-- ready is cleared on the way. A user with a limit is locked (SKIP LOCKED:
-- busy, it is passed over and the walk goes on to the next user in turn order,
-- so that concurrent claims spread over the users rather than all meet at the
-- first and start over) and counted; the claim that reaches its limit takes
-- the user's other ready jobs out of the index (waiting_for 'user'). Another
-- user's row is only locked against a change of its limit, and the turn is
-- written only when it moves (queue_user_started); sessions with no user (one
-- user, never limited) are not locked at all: concurrent claims of one user
-- never queue behind each other's commits.
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
-- session; that was three quarters of the server's CPU per job. One function
-- for the usual path: each call of another costs as much as a statement.
--
-- lease_key_param: a supervisor's secret; the lease token is then derived from
-- it (queue_lease_token), so that the supervisor can end the attempt of a
-- worker that died before telling it, without any role reading a token from
-- the table. Without a key, the token is random: the caller alone knows it.
DROP FUNCTION IF EXISTS public.claim_next_job(text);

CREATE OR REPLACE FUNCTION public.claim_next_job(worker_id_param text DEFAULT NULL,
                                                 lease_key_param uuid DEFAULT NULL)
RETURNS TABLE (job_id uuid, session_id uuid, prompt text, lease_token uuid,
               attempt integer, retry_count integer, max_retries integer, priority smallint)
LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
#variable_conflict use_column
DECLARE
    ts timestamptz := public.queue_now();
    passed uuid[] := '{}';
    first record;
    head record;
    v record;
    walk CURSOR (before bigint, started boolean) FOR
        SELECT u.user_key, u.turn FROM public.queue_users u
        WHERE u.ready AND u.turn < before AND started
        ORDER BY u.turn;
    pick uuid;
    chosen uuid;
    chosen_turn bigint;
    lim_max integer;
    lim_running integer;
    turn_ours boolean;
    at_head boolean;
BEGIN
    IF (SELECT c.run_at FROM public.coding_jobs c
        WHERE c.status = 'pending' AND c.waiting_for = 'run_at'
        ORDER BY c.run_at
        LIMIT 1) <= ts THEN
        PERFORM public.queue_promote_due(ts);
    END IF;
    -- A few rounds at most: each passes over the user of its first job (busy, or
    -- at its limit); the walk passes over the others and goes on.
    FOR round IN 1..8 LOOP
        SELECT c.id, c.user_key, c.priority, c.seq INTO first FROM public.coding_jobs c
        WHERE c.status = 'pending' AND c.waiting_for IS NULL AND c.run_at <= ts
          AND c.user_key <> ALL (passed)
        ORDER BY c.priority DESC, c.seq
        LIMIT 1
        FOR UPDATE SKIP LOCKED;
        IF NOT FOUND THEN
            RETURN;
        END IF;
        SELECT u.turn, u.ready, u.last_started_at INTO head FROM public.queue_users u
        WHERE u.user_key = first.user_key;
        -- The users before U0 in turn order that may have a ready job; none when
        -- U0 has no start yet: users with none come first, then by seq, and
        -- U0's job is the first by seq at its priority. Then U0 itself.
        OPEN walk(head.turn, head.last_started_at IS NOT NULL);
        LOOP
            FETCH walk INTO v;
            at_head := NOT FOUND;
            IF NOT at_head THEN
                CONTINUE WHEN v.user_key = ANY (passed);
                SELECT c.id INTO pick FROM public.coding_jobs c
                WHERE c.user_key = v.user_key AND c.status = 'pending' AND c.waiting_for IS NULL
                  AND c.priority = first.priority AND c.run_at <= ts
                ORDER BY c.seq
                LIMIT 1
                FOR UPDATE SKIP LOCKED;
                IF NOT FOUND THEN
                    -- None free: held by another claim (the usual case), or none.
                    IF NOT EXISTS (SELECT 1 FROM public.coding_jobs c
                                   WHERE c.user_key = v.user_key AND c.status = 'pending'
                                     AND c.waiting_for IS NULL) THEN
                        PERFORM public.queue_user_unready(v.user_key);
                    END IF;
                    CONTINUE;
                END IF;
                chosen := v.user_key;
                chosen_turn := v.turn;
            ELSE
                pick := first.id;
                chosen := first.user_key;
                chosen_turn := head.turn;
                IF NOT head.ready THEN
                    -- Left out of the walk by a race of two transactions: back in
                    -- it (SKIP LOCKED: the claim waits for nothing).
                    UPDATE public.queue_users u
                    SET ready = true,
                        turn = CASE WHEN u.last_started_at IS NULL
                                    THEN first.seq - 4611686018427387904 ELSE u.turn END
                    WHERE u.user_key = chosen AND NOT u.ready
                      AND u.user_key IN (SELECT x.user_key FROM public.queue_users x
                                         WHERE x.user_key = chosen
                                         FOR NO KEY UPDATE SKIP LOCKED);
                END IF;
            END IF;
            turn_ours := false;
            lim_max := NULL;
            lim_running := NULL;
            EXIT WHEN chosen = '00000000-0000-0000-0000-000000000000'::uuid;
            -- A user's row: locked to write its turn and count; busy, share-locked
            -- against a change of its limit (without a limit); else passed over,
            -- and the walk goes on to the next user (concurrent claims spread
            -- over the users rather than all meet at the first).
            SELECT u.max_concurrency, u.running INTO lim_max, lim_running
            FROM public.queue_users u
            WHERE u.user_key = chosen FOR NO KEY UPDATE SKIP LOCKED;
            turn_ours := FOUND;
            IF NOT turn_ours THEN
                SELECT u.max_concurrency, u.running INTO lim_max, lim_running
                FROM public.queue_users u
                WHERE u.user_key = chosen FOR KEY SHARE SKIP LOCKED;
                EXIT WHEN FOUND AND lim_max IS NULL;
            ELSIF lim_running < lim_max OR lim_max IS NULL THEN
                EXIT;
            ELSE
                -- At its limit (a retry came due, or a job was placed as another
                -- started): none of its jobs stays in the claim's index.
                PERFORM public.queue_user_settle(chosen, ts);
            END IF;
            passed := passed || chosen;
            chosen := NULL;
            EXIT WHEN at_head;
        END LOOP;
        CLOSE walk;
        CONTINUE WHEN chosen IS NULL;
        RETURN QUERY
        WITH claimed AS (
            UPDATE public.coding_jobs j
            SET status = 'processing', started_at = ts, updated_at = ts, heartbeat_at = ts,
                worker_id = worker_id_param,
                lease_token = coalesce(public.queue_lease_token(lease_key_param, j.id,
                                                                j.attempt + 1),
                                       gen_random_uuid()),
                attempt = j.attempt + 1, end_reason = NULL
            WHERE j.id = pick
            RETURNING j.id, j.session_id, j.prompt, j.lease_token, j.attempt,
                      j.retry_count, j.max_retries, j.priority),
        recorded AS (
            INSERT INTO public.coding_job_attempts (job_id, attempt, worker_id, started_at)
            SELECT c.id, c.attempt, worker_id_param, ts FROM claimed c)
        -- The casts: a table made from the plan's schema has integer priorities.
        SELECT c.id, c.session_id, c.prompt, c.lease_token, c.attempt::integer,
               c.retry_count::integer, c.max_retries::integer, c.priority::smallint
        FROM claimed c;
        IF chosen_turn IS DISTINCT FROM (SELECT s.last_value FROM public.queue_turn_seq s)
           OR lim_max IS NOT NULL THEN
            PERFORM public.queue_user_started(chosen, turn_ours, ts);
        END IF;
        RETURN;
    END LOOP;
END
$$;
