-- Whose session it is: coding_sessions.user_id, the phone user (Supabase's
-- auth.users id) who owns the session; NULL for the backend's own sessions.
-- The column belongs to the phase that owns coding_sessions: it is created
-- only where that phase has not made it already. Row security, per-user
-- limits and turns key on it.

ALTER TABLE public.coding_sessions ADD COLUMN IF NOT EXISTS user_id uuid;

-- A user's sessions, for row security and for the user's limit and turn.
CREATE INDEX coding_sessions_user_idx ON public.coding_sessions (user_id)
    WHERE user_id IS NOT NULL;
