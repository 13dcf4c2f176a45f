-- The output kept with a job: its last 65536 bytes (the end is what matters).
CREATE OR REPLACE FUNCTION public.queue_output_tail(output_param text) RETURNS text
LANGUAGE plpgsql IMMUTABLE STRICT SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    tail text := output_param;
BEGIN
    IF octet_length(tail) <= 65536 THEN
        RETURN tail;
    END IF;
    tail := "right"(tail, 65536);
    -- Each character is 1 to 4 bytes: dropping a quarter of the excess in
    -- characters converges in a few steps, never cutting one in half.
    WHILE octet_length(tail) > 65536 LOOP
        tail := "right"(tail, char_length(tail) - (octet_length(tail) - 65536 + 3) / 4);
    END LOOP;
    RETURN tail;
END
$$;
