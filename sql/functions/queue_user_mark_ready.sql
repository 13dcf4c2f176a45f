-- The user may have jobs to start: into the claim's walk of users, only when it
-- moves (no write, no lock, while the user is already there). A user with no
-- start yet takes its turn from the job that made it ready (seq_param): before
-- every user that started, in submission order among those that did not. The
-- claim passes over a user the flag names wrongly and clears it. (The order
-- rule: queue_placement.sql.)
CREATE OR REPLACE FUNCTION public.queue_user_mark_ready(user_key_param uuid, seq_param bigint)
RETURNS void
LANGUAGE plpgsql VOLATILE SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    UPDATE public.queue_users u
    SET ready = true,
        turn = CASE WHEN u.last_started_at IS NULL THEN seq_param - 4611686018427387904
                    ELSE u.turn END
    WHERE u.user_key = user_key_param AND NOT u.ready;
END
$$;
