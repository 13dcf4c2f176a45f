-- Progress events of the attempt holding the lease, in order; each announced
-- on job_progress (ids and the kind only: the phone reads the row). 0 and
-- nothing written when the lease is stale.
--
-- An attempt keeps its first queue_config.max_events_per_attempt events and
-- max_event_bytes_per_attempt bytes (kind and payload text): the rest are
-- dropped, counted on the attempt's row (events_dropped) and in
-- queue_counters, whoever calls (a worker login could otherwise write without
-- bound). Returns how many were recorded: 0 also once the caps are reached.
CREATE OR REPLACE FUNCTION public.queue_add_events(job_id_param uuid, lease_token_param uuid,
                                                   kinds text[], payloads jsonb[])
RETURNS integer
LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    holder record;
    used_events integer;
    used_bytes bigint;
    room_events bigint;
    room_bytes bigint;
    added integer;
    added_bytes bigint;
    dropped integer;
    dropped_bytes bigint;
BEGIN
    IF cardinality(kinds) IS DISTINCT FROM cardinality(payloads) THEN
        RAISE EXCEPTION 'queue_add_events: % kinds but % payloads',
            cardinality(kinds), cardinality(payloads)
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    SELECT j.session_id, j.attempt INTO holder
    FROM public.coding_jobs j
    WHERE j.id = job_id_param AND j.lease_token = lease_token_param AND j.status = 'processing';
    IF NOT FOUND OR cardinality(kinds) = 0 THEN
        RETURN 0;
    END IF;
    -- The attempt's row, locked: two calls of one attempt count one after the other.
    SELECT a.events, a.event_bytes INTO used_events, used_bytes
    FROM public.coding_job_attempts a
    WHERE a.job_id = job_id_param AND a.attempt = holder.attempt
    FOR NO KEY UPDATE;
    SELECT c.max_events_per_attempt - coalesce(used_events, 0),
           c.max_event_bytes_per_attempt - coalesce(used_bytes, 0)
    INTO room_events, room_bytes
    FROM public.queue_config c;
    WITH wanted AS (
        SELECT e.kind, e.payload, e.n,
               octet_length(e.kind) + octet_length(e.payload::text) AS size
        FROM unnest(kinds, payloads) WITH ORDINALITY AS e (kind, payload, n)),
    -- in order, while both caps hold: once one event does not fit, none after it
    marked AS (
        SELECT w.*, w.n <= room_events
                    AND sum(w.size) OVER (ORDER BY w.n) <= room_bytes AS fits
        FROM wanted w),
    inserted AS (
        INSERT INTO public.coding_job_events (job_id, session_id, attempt, kind, payload)
        SELECT job_id_param, holder.session_id, holder.attempt, m.kind, m.payload
        FROM marked m WHERE m.fits
        ORDER BY m.n
        RETURNING id, kind),
    announced AS (
        SELECT count(pg_notify('job_progress', json_build_object(
                   'job_id', job_id_param, 'session_id', holder.session_id,
                   'event_id', i.id, 'kind', i.kind)::text)) AS n
        FROM (SELECT * FROM inserted ORDER BY id) i)
    SELECT (SELECT a.n FROM announced a),
           coalesce(sum(m.size) FILTER (WHERE m.fits), 0),
           count(*) FILTER (WHERE NOT m.fits),
           coalesce(sum(m.size) FILTER (WHERE NOT m.fits), 0)
    INTO added, added_bytes, dropped, dropped_bytes
    FROM marked m;
    UPDATE public.coding_job_attempts a
    SET events = a.events + added, event_bytes = a.event_bytes + added_bytes,
        events_dropped = a.events_dropped + dropped
    WHERE a.job_id = job_id_param AND a.attempt = holder.attempt;
    IF dropped > 0 THEN
        UPDATE public.queue_counters
        SET events_dropped = events_dropped + dropped,
            event_bytes_dropped = event_bytes_dropped + dropped_bytes;
    END IF;
    RETURN added;
END
$$;
