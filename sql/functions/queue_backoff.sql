-- Delay before retry number `failures`: min(cap, base * 2^(failures-1)),
-- stretched by a random factor in [1, 1 + jitter] so that retries of jobs that
-- failed together do not all come back at the same instant; base, cap and
-- jitter are queue_config's. Computed in seconds: as an interval,
-- base * 2^(failures-1) overflows (10 s * 2^40 is past the interval's ~292,000
-- years) long before failures reach max_retries. 2.0::double precision:
-- power(integer, integer) is exactly what an overload planted in a writable
-- schema would have matched.
CREATE OR REPLACE FUNCTION public.queue_backoff(failures integer) RETURNS interval
LANGUAGE sql VOLATILE SET search_path = pg_catalog, pg_temp AS $$
    SELECT make_interval(secs => least(extract(epoch FROM c.backoff_cap)::double precision,
                                       extract(epoch FROM c.backoff_base)::double precision
                                       * power(2.0::double precision,
                                               least(greatest(failures - 1, 0), 100)::double precision))
                                 * (1.0::double precision + c.backoff_jitter * random()))
    FROM public.queue_config c
$$;
