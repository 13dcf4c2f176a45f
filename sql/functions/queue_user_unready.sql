-- The claim's walk met a user named ready with no job ready at the priority it
-- looks for: when the user has none at all, it leaves the walk (its row taken
-- SKIP LOCKED: a busy one is cleared by a later claim). (The order rule:
-- queue_placement.sql.)
CREATE OR REPLACE FUNCTION public.queue_user_unready(user_key_param uuid)
RETURNS void
LANGUAGE plpgsql VOLATILE SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    UPDATE public.queue_users u SET ready = false
    WHERE u.user_key = user_key_param AND u.ready
      AND u.user_key IN (SELECT x.user_key FROM public.queue_users x
                         WHERE x.user_key = user_key_param FOR NO KEY UPDATE SKIP LOCKED)
      AND NOT EXISTS (SELECT 1 FROM public.coding_jobs c
                      WHERE c.user_key = user_key_param AND c.status = 'pending'
                        AND c.waiting_for IS NULL);
END
$$;
