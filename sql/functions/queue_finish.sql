-- THE LOCK ORDER (no deadlock cycle). Each of these locks the job's SESSION ROW
-- first (FOR NO KEY UPDATE: inserts and ends of one session serialize, so that
-- a promotion never misses a job being inserted), then its USER'S ROW in
-- queue_users (queue_user_lock: none for sessions with no user), then rows of
-- that session's jobs, and of that user's jobs: the placing trigger
-- (queue_place_new_job), every end of an attempt
-- (complete, fail, release, cancel, the reaper, a dead worker's rescue: all
-- through this function), the operator's token-less complete/fail, cancel_job,
-- queue_cancel_session, queue_retry_job, queue_requeue_failed, and an UPDATE of
-- max_concurrency. None of them holds a job row while it waits for a session
-- or a user. An operator's change of a user's limit locks the user's row FOR
-- UPDATE, then the user's jobs (queue_user_replace): it waits for no session.
-- Job rows are otherwise locked only by:
--   the claim (pending rows and users' rows, SKIP LOCKED), which waits for
--   nothing;
--   heartbeats and renewals (processing rows): a pod's renewal takes them SKIP
--   LOCKED, and a cancel of a whole session locks several in id order;
--   prune and purge (finished rows, SKIP LOCKED).
-- The reaper keeps the order (each candidate's session, then the job) but
-- holds what it reaped while it goes on, across sessions: it waits only for
-- the first session of a sweep's batch, when it holds nothing yet; every
-- other session, and every job, it takes SKIP LOCKED and passes over a busy
-- one (the next batch or sweep has it), so no wait-for edge leaves it while
-- it holds anything.
-- So every waiter waits either for a job row whose holder waits for nothing or
-- only for rows it can get in the same order, or for a session while holding no
-- job row. The one remaining cycle is two multi-row INSERTs that lock the same
-- sessions in different orders: the client inserts in session order
-- (store.enqueue_many), and so must anyone who inserts rows of several existing
-- sessions in one statement.
--
-- The functions assume READ COMMITTED (each statement sees what committed
-- before it), as every caller of the queue uses.

-- The one body of every end of an attempt, and of the operator's token-less
-- complete and fail. kind_param: 'complete', 'release', 'cancel' or 'fail'
-- (reason_param says which failure). With a lease: only the attempt holding it
-- (status processing); with NULL: any pending or processing job (the operator).
-- expired_before: the reaper's condition, re-checked under the lock. Returns
-- the job's new status, NULL when nothing changed. Executable by the owner
-- alone: the entry points decide who may take which path.
--
-- A release past queue_config.max_releases_per_job counts as a failed attempt
-- (end reason 'release_limit', counted in queue_counters), unless a cancel was
-- requested: a job given back again and again (a worker login that claims and
-- releases in a loop, pods that never finish it) still ends, after max_retries,
-- instead of recording attempts forever.
CREATE OR REPLACE FUNCTION public.queue_finish(job_id_param uuid, lease_token_param uuid,
                                               kind_param text, reason_param text,
                                               error_param text, output_param text,
                                               expired_before timestamptz)
RETURNS text
LANGUAGE plpgsql VOLATILE SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    ts timestamptz := public.queue_now();
    cur record;
    mc integer;
    locked_session uuid;
    open_job boolean;
    kind text;
    reason text;
    error text;
    new_status text;
    counted boolean;
    new_run_at timestamptz;
    placed text;
    usr record;
    locked_user boolean := false;
BEGIN
    LOOP
        SELECT j.session_id, j.status, j.lease_token, j.attempt, j.retry_count, j.max_retries,
               j.cancel_requested_at, j.seq, j.run_at, j.heartbeat_at, j.priority, j.release_count,
               j.user_key
        INTO cur FROM public.coding_jobs j WHERE j.id = job_id_param;
        IF NOT FOUND THEN
            RETURN NULL;
        END IF;
        IF lease_token_param IS NULL THEN
            open_job := cur.status IN ('pending', 'processing');
        ELSE
            open_job := coalesce(cur.status = 'processing' AND cur.lease_token = lease_token_param
                                 AND (expired_before IS NULL
                                      OR cur.heartbeat_at < expired_before), false);
        END IF;
        IF NOT open_job THEN
            RETURN NULL;
        END IF;
        IF locked_session IS NULL THEN
            -- The session first (the lock order in the header), then the job.
            SELECT s.id, s.max_concurrency INTO locked_session, mc
            FROM public.coding_sessions s WHERE s.id = cur.session_id FOR NO KEY UPDATE;
            IF NOT FOUND THEN
                RETURN NULL;
            END IF;
        END IF;
        IF NOT locked_user THEN
            -- The user next: its running count and its waiting jobs.
            SELECT * INTO usr FROM public.queue_user_lock(cur.user_key);
            locked_user := true;
        END IF;

        kind := kind_param;
        reason := reason_param;
        error := error_param;
        IF kind_param = 'release' AND cur.cancel_requested_at IS NULL
           AND cur.release_count >= (SELECT c.max_releases_per_job FROM public.queue_config c) THEN
            kind := 'fail';
            reason := 'release_limit';
            error := 'released ' || cur.release_count || ' times (queue_config.'
                     'max_releases_per_job): this release counts as a failed attempt';
        END IF;
        new_status := CASE
            WHEN kind = 'complete' THEN 'completed'
            WHEN kind = 'cancel' OR cur.cancel_requested_at IS NOT NULL THEN 'cancelled'
            WHEN kind = 'release' THEN 'pending'
            WHEN cur.retry_count + 1 >= cur.max_retries THEN 'failed'
            ELSE 'pending' END;
        counted := kind = 'fail' AND new_status IN ('pending', 'failed');
        new_run_at := CASE WHEN new_status <> 'pending' THEN cur.run_at
                           WHEN kind = 'release' THEN ts
                           ELSE ts + public.queue_backoff((cur.retry_count + 1)::integer) END;
        placed := CASE WHEN new_status = 'pending' THEN
                      public.queue_placement(cur.session_id, cur.seq, new_run_at, mc, ts) END;
        IF new_status = 'pending' AND placed IS NULL
           AND usr.running - (cur.status = 'processing')::integer >= usr.max_concurrency THEN
            placed := 'user';
        END IF;

        -- The row was read before the session's lock was ours: the guard sees
        -- any change since (an end, a cancel, a claim of a pending job, a
        -- heartbeat for the reaper), and we read again, under the lock.
        UPDATE public.coding_jobs j
        SET status = new_status,
            retry_count = CASE WHEN counted THEN least(j.retry_count + 1, j.max_retries)
                               ELSE j.retry_count END,
            release_count = CASE WHEN kind = 'release' AND new_status = 'pending'
                                 THEN j.release_count + 1 ELSE j.release_count END,
            run_at = new_run_at,
            waiting_for = placed,
            completed_at = CASE WHEN new_status = 'pending' THEN NULL ELSE ts END,
            heartbeat_at = NULL,
            end_reason = CASE WHEN new_status = 'cancelled' THEN 'cancelled'
                              WHEN kind = 'complete' THEN 'completed'
                              WHEN kind = 'release' THEN coalesce(error, 'released')
                              ELSE coalesce(reason, 'error') END,
            error_message = CASE WHEN counted THEN coalesce(error, reason, 'error')
                                 WHEN new_status = 'cancelled'
                                     THEN coalesce(error, j.error_message)
                                 ELSE j.error_message END,
            lease_token = CASE WHEN lease_token_param IS NULL AND new_status = 'completed'
                               THEN NULL ELSE j.lease_token END,
            output = coalesce(public.queue_output_tail(output_param), j.output),
            updated_at = ts
        WHERE j.id = job_id_param AND j.status = cur.status
          AND j.lease_token IS NOT DISTINCT FROM cur.lease_token AND j.attempt = cur.attempt
          AND j.retry_count = cur.retry_count AND j.release_count = cur.release_count
          AND j.cancel_requested_at IS NOT DISTINCT FROM cur.cancel_requested_at
          AND (expired_before IS NULL OR j.heartbeat_at < expired_before);
        EXIT WHEN FOUND;
    END LOOP;

    IF cur.status = 'processing' THEN
        UPDATE public.coding_job_attempts a
        SET ended_at = ts,
            end_reason = CASE kind WHEN 'complete' THEN 'completed'
                                   WHEN 'release' THEN 'released'
                                   WHEN 'cancel' THEN 'cancelled'
                                   ELSE coalesce(reason, 'error') END,
            error_message = CASE WHEN lease_token_param IS NULL AND kind = 'complete'
                                     THEN 'completed by an operator'
                                 WHEN kind = 'fail' THEN coalesce(error, reason)
                                 ELSE error END
        WHERE a.job_id = job_id_param AND a.attempt = cur.attempt AND a.ended_at IS NULL;
    END IF;
    IF kind IS DISTINCT FROM kind_param THEN
        UPDATE public.queue_counters SET releases_counted = releases_counted + 1;
    END IF;

    IF cur.status = 'processing' AND usr.max_concurrency IS NOT NULL THEN
        UPDATE public.queue_users u SET running = greatest(u.running - 1, 0)
        WHERE u.user_key = cur.user_key;
    END IF;
    IF new_status <> 'pending' THEN
        PERFORM public.queue_promote(cur.session_id, mc, ts);
    ELSIF placed IS NULL THEN
        PERFORM public.queue_user_mark_ready(cur.user_key, cur.seq);
        IF kind = 'release' THEN
            PERFORM pg_notify('new_job', json_build_object(
                'job_id', job_id_param, 'session_id', cur.session_id,
                'priority', cur.priority)::text);
        END IF;
    END IF;
    -- A place of the user's may have come free: its next job may start. Nothing
    -- to do at the end of an attempt while the user stays under its limit and no
    -- job of its waits for it (the ended job was not ready; the jobs it made
    -- ready, queue_user_mark_ready put the user in the walk for).
    IF usr.max_concurrency IS NOT NULL
       AND (cur.status <> 'processing' OR usr.running - 1 >= usr.max_concurrency
            OR EXISTS (SELECT 1 FROM public.coding_jobs c
                       WHERE c.user_key = cur.user_key AND c.status = 'pending'
                         AND c.waiting_for = 'user')) THEN
        PERFORM public.queue_user_settle(cur.user_key, ts);
    END IF;
    RETURN new_status;
END
$$;
