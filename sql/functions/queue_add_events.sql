-- Progress events of the attempt holding the lease, in order; each announced
-- on job_progress (ids and the kind only: the phone reads the row). 0 and
-- nothing written when the lease is stale.
CREATE OR REPLACE FUNCTION public.queue_add_events(job_id_param uuid, lease_token_param uuid,
                                                   kinds text[], payloads jsonb[])
RETURNS integer
LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    holder record;
    added integer;
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
    WITH inserted AS (
        INSERT INTO public.coding_job_events (job_id, session_id, attempt, kind, payload)
        SELECT job_id_param, holder.session_id, holder.attempt, e.kind, e.payload
        FROM unnest(kinds, payloads) WITH ORDINALITY AS e (kind, payload, n)
        ORDER BY e.n
        RETURNING id, kind)
    SELECT count(pg_notify('job_progress', json_build_object(
               'job_id', job_id_param, 'session_id', holder.session_id,
               'event_id', i.id, 'kind', i.kind)::text))
    INTO added
    FROM (SELECT * FROM inserted ORDER BY id) i;
    RETURN added;
END
$$;
