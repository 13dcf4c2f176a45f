-- When each reaper last swept, and its totals. Each CronJob run is a new pod,
-- so a new host:pid row: rows of reapers not seen for a week are dropped on
-- the way, or the table would grow forever.
CREATE OR REPLACE FUNCTION public.queue_record_reaper_run(reaper_param text, requeued_param bigint,
                                                          dead_lettered_param bigint,
                                                          pruned_param bigint)
RETURNS void
LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    ts timestamptz := public.queue_now();
BEGIN
    DELETE FROM public.queue_reaper_runs
    WHERE last_sweep_at < ts - interval '7 days' AND reaper <> reaper_param;
    INSERT INTO public.queue_reaper_runs AS r (reaper, last_sweep_at, requeued, dead_lettered,
                                                pruned)
    VALUES (reaper_param, ts, greatest(requeued_param, 0), greatest(dead_lettered_param, 0),
            greatest(pruned_param, 0))
    ON CONFLICT (reaper) DO UPDATE
    SET last_sweep_at = excluded.last_sweep_at,
        requeued = r.requeued + excluded.requeued,
        dead_lettered = r.dead_lettered + excluded.dead_lettered,
        pruned = r.pruned + excluded.pruned;
END
$$;
