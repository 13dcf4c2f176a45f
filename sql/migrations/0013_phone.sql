-- The phone's rows (sql/row_security.sql) are applied for the shape of the
-- database: with Supabase's roles and auth.uid(), or without. The migration
-- runner records which it applied for, to apply the file again when the shape
-- changes (Supabase's auth schema made after the queue's migrations, say).

ALTER TABLE public.queue_repeatables ADD COLUMN IF NOT EXISTS supabase boolean;
