-- The one clock of the queue: now() of the transaction, or mobvibe.now where
-- the owner switched the test clock on (queue_test_clock): tests steer it per
-- session with SET mobvibe.now = '...', and move time instead of sleeping.
--
-- queue_now() stays a plain SQL function with no SET clause, so that the
-- planner inlines it (it is evaluated per row in the claim and the stats). An
-- inlined body is parsed in the caller's search_path, hence every name in it,
-- operators included, is qualified. Production never sets mobvibe.now and pays
-- one current_setting(); a session that sets it asks queue_test_clock().
CREATE OR REPLACE FUNCTION public.queue_now() RETURNS timestamptz
LANGUAGE sql STABLE PARALLEL SAFE AS $$
    SELECT CASE WHEN pg_catalog.current_setting('mobvibe.now', true) OPERATOR(pg_catalog.<>) ''
                THEN public.queue_test_clock()
                ELSE pg_catalog.now() END
$$;
