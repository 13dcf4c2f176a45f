-- THE ORDER RULE. A job may start only when fewer than its session's
-- max_concurrency unfinished (pending or processing) jobs of the session were
-- submitted (seq) before it, and while fewer than its user's limit of the
-- user's jobs are processing (queue_user_limits, else
-- queue_config.user_max_concurrency; sessions with no user: no limit). Among
-- the jobs that may start: priority, then the user whose most recent start is
-- the oldest (no start yet first; every session with no user is one user),
-- then seq.
-- Every pending job says why it cannot start yet, in waiting_for:
--   NULL       it may start once due: the only jobs in the claim's index
--   'session'  max_concurrency earlier unfinished jobs of its session are ahead
--   'run_at'   a head of its session whose run_at is still in the future
--   'user'     a due head of its session whose user runs its limit of jobs
-- so that a claim never walks waiting jobs: it promotes the 'run_at' heads that
-- came due (an index on run_at), then takes the first ready job. The functions
-- that change a session's unfinished set keep waiting_for true:
--   a new job is placed by a BEFORE INSERT trigger (queue_place_new_job);
--   a job that leaves the unfinished states (completed, failed, cancelled)
--   promotes the session's next jobs (queue_promote) and announces them;
--   a job that comes back (a backoff retry, a release, an operator's requeue)
--   is placed again (this function); an operator's requeue or retry gives it a
--   new seq: it is submitted again, at the back of its session, so that it
--   never overtakes a job already running (the bound would not hold);
--   a change of max_concurrency places the session's pending jobs again
--   (queue_replace_session_jobs).
-- The user's half, on the user's row in queue_users (its limit in force, its
-- processing jobs while it has a limit, its turn, whether it may have jobs in
-- the claim's index), each job carrying its session's user (user_key):
--   a job that may start by its session's rule waits for its user while the
--   user runs its limit (queue_user_lock, at every placing above);
--   the claim that brings a user to its limit takes the user's other ready
--   jobs out of the claim's index (queue_user_started, queue_user_settle),
--   and a claim that meets a ready job of a user at its limit (a retry came
--   due) does the same, once;
--   the end of a user's job, a cancel of a user's ready job, lets the user's
--   best waiting jobs start, as many as its limit leaves (queue_user_settle),
--   announced on new_job;
--   an operator's change of a user's limit, or of the default, places that
--   user's jobs again (queue_user_replace), under the user's row FOR UPDATE:
--   no claim or end of the user's jobs runs meanwhile, so the limit holds
--   even when lowered while jobs run.
-- The turn: the claim takes the first ready job by priority and seq, then asks
-- whether a user before its user in turn order has a ready job at that
-- priority (queue_turn: only users that may have one are read).

-- Where a pending job of the session stands: 'session' when max_concurrency
-- unfinished jobs submitted before it (seq) are ahead, else 'run_at' until it is
-- due, else NULL. Reads at most max_concurrency index entries.
CREATE OR REPLACE FUNCTION public.queue_placement(session_id_param uuid, seq_param bigint,
                                                  run_at_param timestamptz,
                                                  max_concurrency_param integer,
                                                  now_param timestamptz)
RETURNS text
LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    ahead bigint;
BEGIN
    SELECT count(*) INTO ahead
    FROM (SELECT 1 FROM public.coding_jobs o
          WHERE o.session_id = session_id_param AND o.status IN ('pending', 'processing')
            AND o.seq < seq_param
          LIMIT max_concurrency_param) a;
    IF ahead >= max_concurrency_param THEN
        RETURN 'session';
    END IF;
    RETURN CASE WHEN run_at_param > now_param THEN 'run_at' END;
END
$$;
