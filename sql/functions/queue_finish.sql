-- THE LOCK ORDER (no deadlock cycle). Each of these locks the job's SESSION ROW
-- first (FOR NO KEY UPDATE: inserts and ends of one session serialize, so that
-- a promotion never misses a job being inserted), then rows of that session's
-- jobs only: the placing trigger (queue_place_new_job), every end of an attempt
-- (complete, fail, release, cancel, the reaper, a dead worker's rescue: all
-- through this function), the operator's token-less complete/fail, cancel_job,
-- queue_cancel_session, queue_retry_job, queue_requeue_failed, and an UPDATE of
-- max_concurrency. None of them holds a job row while it waits for a session.
-- Job rows are otherwise locked only by:
--   the claim (pending rows, SKIP LOCKED), which waits for nothing;
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
    new_status text;
    counted boolean;
    new_run_at timestamptz;
    placed text;
BEGIN
    LOOP
        SELECT j.session_id, j.status, j.lease_token, j.attempt, j.retry_count, j.max_retries,
               j.cancel_requested_at, j.seq, j.run_at, j.heartbeat_at, j.priority
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

        new_status := CASE
            WHEN kind_param = 'complete' THEN 'completed'
            WHEN kind_param = 'cancel' OR cur.cancel_requested_at IS NOT NULL THEN 'cancelled'
            WHEN kind_param = 'release' THEN 'pending'
            WHEN cur.retry_count + 1 >= cur.max_retries THEN 'failed'
            ELSE 'pending' END;
        counted := kind_param = 'fail' AND new_status IN ('pending', 'failed');
        new_run_at := CASE WHEN new_status <> 'pending' THEN cur.run_at
                           WHEN kind_param = 'release' THEN ts
                           ELSE ts + public.queue_backoff((cur.retry_count + 1)::integer) END;
        placed := CASE WHEN new_status = 'pending' THEN
                      public.queue_placement(cur.session_id, cur.seq, new_run_at, mc, ts) END;

        -- The row was read before the session's lock was ours: the guard sees
        -- any change since (an end, a cancel, a claim of a pending job, a
        -- heartbeat for the reaper), and we read again, under the lock.
        UPDATE public.coding_jobs j
        SET status = new_status,
            retry_count = CASE WHEN counted THEN least(j.retry_count + 1, j.max_retries)
                               ELSE j.retry_count END,
            run_at = new_run_at,
            waiting_for = placed,
            completed_at = CASE WHEN new_status = 'pending' THEN NULL ELSE ts END,
            heartbeat_at = NULL,
            end_reason = CASE WHEN new_status = 'cancelled' THEN 'cancelled'
                              WHEN kind_param = 'complete' THEN 'completed'
                              WHEN kind_param = 'release' THEN coalesce(error_param, 'released')
                              ELSE coalesce(reason_param, 'error') END,
            error_message = CASE WHEN counted THEN coalesce(error_param, reason_param, 'error')
                                 WHEN new_status = 'cancelled'
                                     THEN coalesce(error_param, j.error_message)
                                 ELSE j.error_message END,
            -- an operator's completion leaves no lease: the retried-commit
            -- answer of complete_job is never given to an overruled attempt
            lease_token = CASE WHEN lease_token_param IS NULL AND new_status = 'completed'
                               THEN NULL ELSE j.lease_token END,
            output = coalesce(public.queue_output_tail(output_param), j.output),
            updated_at = ts
        WHERE j.id = job_id_param AND j.status = cur.status
          AND j.lease_token IS NOT DISTINCT FROM cur.lease_token AND j.attempt = cur.attempt
          AND j.retry_count = cur.retry_count
          AND j.cancel_requested_at IS NOT DISTINCT FROM cur.cancel_requested_at
          AND (expired_before IS NULL OR j.heartbeat_at < expired_before);
        EXIT WHEN FOUND;
    END LOOP;

    IF cur.status = 'processing' THEN
        UPDATE public.coding_job_attempts a
        SET ended_at = ts,
            end_reason = CASE kind_param WHEN 'complete' THEN 'completed'
                                         WHEN 'release' THEN 'released'
                                         WHEN 'cancel' THEN 'cancelled'
                                         ELSE coalesce(reason_param, 'error') END,
            error_message = CASE WHEN lease_token_param IS NULL AND kind_param = 'complete'
                                     THEN 'completed by an operator'
                                 WHEN kind_param = 'fail' THEN coalesce(error_param, reason_param)
                                 ELSE error_param END
        WHERE a.job_id = job_id_param AND a.attempt = cur.attempt AND a.ended_at IS NULL;
    END IF;

    IF new_status <> 'pending' THEN
        PERFORM public.queue_promote(cur.session_id, mc, ts);
    ELSIF kind_param = 'release' AND placed IS NULL THEN
        PERFORM pg_notify('new_job', json_build_object(
            'job_id', job_id_param, 'session_id', cur.session_id, 'priority', cur.priority)::text);
    END IF;
    RETURN new_status;
END
$$;
