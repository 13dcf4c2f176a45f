-- Requeue, as failed attempts, processing jobs silent for longer than the
-- heartbeat timeout that operators configured: whoever calls, no live attempt
-- is expired early. The oldest candidates are read, in session order; each
-- session, then each job, is locked and re-checked under the lock, so that two
-- reapers never count one attempt twice. The first session is waited for (the
-- reaper holds nothing yet: a concurrent reaper that took it is then waited
-- out, not raced), the others and the jobs are taken SKIP LOCKED (the lock
-- order: queue_finish.sql). A row per candidate: will_retry and new_status NULL when it was
-- passed over (busy, or ended or renewed meanwhile). An attempt whose cancel
-- was requested ends cancelled.
CREATE OR REPLACE FUNCTION public.queue_reap_expired(batch_size integer DEFAULT 500)
RETURNS TABLE (job_id uuid, session_id uuid, will_retry boolean, new_status text)
LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    timeout interval := (SELECT c.heartbeat_timeout FROM public.queue_config c);
    cutoff timestamptz := public.queue_now() - timeout;
    stale record;
    seen uuid;
    session_ours boolean;
BEGIN
    FOR stale IN
        SELECT o.id, o.session_id, o.lease_token
        FROM (SELECT c.id, c.session_id, c.lease_token FROM public.coding_jobs c
              WHERE c.status = 'processing' AND c.heartbeat_at < cutoff
              ORDER BY c.heartbeat_at
              LIMIT greatest(batch_size, 0)) o
        ORDER BY o.session_id, o.id
    LOOP
        job_id := stale.id;
        session_id := stale.session_id;
        will_retry := NULL;
        new_status := NULL;
        IF seen IS NULL THEN
            seen := stale.session_id;
            PERFORM 1 FROM public.coding_sessions s
            WHERE s.id = stale.session_id FOR NO KEY UPDATE;
            session_ours := FOUND;
        ELSIF seen <> stale.session_id THEN
            seen := stale.session_id;
            PERFORM 1 FROM public.coding_sessions s
            WHERE s.id = stale.session_id FOR NO KEY UPDATE SKIP LOCKED;
            session_ours := FOUND;
        END IF;
        IF session_ours THEN
            PERFORM 1 FROM public.coding_jobs c
            WHERE c.id = stale.id AND c.status = 'processing'
              AND c.lease_token = stale.lease_token AND c.heartbeat_at < cutoff
            FOR NO KEY UPDATE SKIP LOCKED;
            IF FOUND THEN
                new_status := public.queue_finish(
                    stale.id, stale.lease_token, 'fail'::text, 'heartbeat_expired'::text,
                    'heartbeat expired: no heartbeat for ' || timeout::text, NULL::text, cutoff);
                will_retry := new_status = 'pending';
            END IF;
        END IF;
        RETURN NEXT;
    END LOOP;
END
$$;
