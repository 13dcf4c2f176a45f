-- The limit in force for a user: the operators' row in queue_user_limits, else
-- queue_config.user_max_concurrency; NULL when neither sets one, and always for
-- the nil uuid (every session with no user: never limited). (The order rule:
-- queue_placement.sql.)
CREATE OR REPLACE FUNCTION public.queue_user_limit_of(user_key_param uuid)
RETURNS integer
LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp AS $$
    SELECT CASE WHEN user_key_param <> '00000000-0000-0000-0000-000000000000'::uuid THEN
               coalesce((SELECT l.max_concurrency FROM public.queue_user_limits l
                         WHERE l.user_id = user_key_param),
                        (SELECT c.user_max_concurrency FROM public.queue_config c))
           END
$$;
