-- After the claim started a job of the user: the user's turn moves to the back
-- (the next number of queue_turn_seq), written only when it moves: while the
-- user's turn is the last number drawn, no user started since, and the user is
-- at the back already (so the backend's sessions, one user, cost no write while
-- they alone start jobs). The row is written when the claim holds it
-- (turn_ours), and for sessions with no user when no other claim holds it
-- (SKIP LOCKED: one at the same instant is as good). With a limit, the running
-- count grows, and at the limit the user's other ready jobs leave the claim's
-- index; a user with nothing ready leaves the claim's walk (in the same write). (The order rule:
-- queue_placement.sql.)
CREATE OR REPLACE FUNCTION public.queue_user_started(user_key_param uuid, turn_ours boolean,
                                                     now_param timestamptz)
RETURNS void
LANGUAGE plpgsql VOLATILE SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    usr record;
    last bigint := (SELECT s.last_value FROM public.queue_turn_seq s);
    moves boolean;
    stays boolean;
BEGIN
    IF NOT turn_ours THEN
        IF user_key_param <> '00000000-0000-0000-0000-000000000000'::uuid THEN
            RETURN;
        END IF;
        SELECT u.turn, u.max_concurrency, u.running INTO usr FROM public.queue_users u
        WHERE u.user_key = user_key_param;
        IF usr.turn = last THEN
            RETURN;  -- at the back already: no write
        END IF;
        PERFORM 1 FROM public.queue_users u
        WHERE u.user_key = user_key_param FOR NO KEY UPDATE SKIP LOCKED;
        IF NOT FOUND THEN
            RETURN;
        END IF;
    END IF;
    SELECT u.turn, u.max_concurrency, u.running, u.ready INTO usr FROM public.queue_users u
    WHERE u.user_key = user_key_param;
    moves := usr.turn IS DISTINCT FROM last;
    -- Whether the user leaves the walk, in the same write as its turn: one new
    -- version of the row, none of it in queue_users_turn_idx when it leaves.
    stays := coalesce(usr.running + 1 >= usr.max_concurrency, false)
             OR EXISTS (SELECT 1 FROM public.coding_jobs c
                        WHERE c.user_key = user_key_param AND c.status = 'pending'
                          AND c.waiting_for IS NULL);
    IF moves OR usr.max_concurrency IS NOT NULL OR usr.ready AND NOT stays THEN
        UPDATE public.queue_users u
        SET turn = CASE WHEN moves THEN nextval('public.queue_turn_seq'::regclass)
                        ELSE u.turn END,
            last_started_at = CASE WHEN moves THEN now_param ELSE u.last_started_at END,
            running = u.running + 1,
            ready = u.ready AND stays
        WHERE u.user_key = user_key_param
        RETURNING u.max_concurrency, u.running INTO usr;
    END IF;
    IF usr.running >= usr.max_concurrency THEN
        PERFORM public.queue_user_settle(user_key_param, now_param);
    END IF;
END
$$;
