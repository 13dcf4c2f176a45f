-- The lease token of an attempt claimed with a pod's lease key: the first 16
-- bytes of SHA-256 of "key job_id attempt". The pod that chose the key (its
-- supervisor, which keeps it in memory only) can tell the token of any attempt
-- its workers claimed, to end the attempt of a worker that died; nobody else
-- can, although job ids, attempts and worker ids are readable. Immutable: the
-- claim computes it, mobvibe.sql.jobs.lease_token computes the same in Python.
-- Executable by the owner alone.
CREATE OR REPLACE FUNCTION public.queue_lease_token(lease_key_param uuid, job_id_param uuid,
                                                    attempt_param integer)
RETURNS uuid
LANGUAGE sql IMMUTABLE STRICT SET search_path = pg_catalog, pg_temp AS $$
    SELECT encode(substring(sha256(convert_to(
               lease_key_param::text || ' ' || job_id_param::text || ' ' || attempt_param::text,
               'UTF8')) FROM 1 FOR 16), 'hex')::uuid
$$;
