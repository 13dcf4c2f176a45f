-- mobvibe.now, where the owner switched the test clock on
-- (queue_config.test_clock); else the real now(). SECURITY DEFINER functions
-- trust queue_now(), so no other role may move the clock: the switch is the
-- owner's alone.
CREATE OR REPLACE FUNCTION public.queue_test_clock() RETURNS timestamptz
LANGUAGE plpgsql STABLE PARALLEL SAFE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    IF (SELECT c.test_clock FROM public.queue_config c) THEN
        RETURN current_setting('mobvibe.now')::timestamptz;
    END IF;
    RETURN now();
END
$$;
