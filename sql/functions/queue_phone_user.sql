-- The phone user a request acts for: Supabase's auth.uid(), the sub of the
-- request's JWT (request.jwt.claims); NULL without a JWT, or where the database
-- has no auth.uid(). A sub that is not a uuid (or claims that are not JSON) is
-- refused with insufficient_privilege: the request names no user. Row security
-- (sql/row_security.sql) and cancel_job key on it.
CREATE OR REPLACE FUNCTION public.queue_phone_user()
RETURNS uuid
LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    IF pg_catalog.to_regprocedure('auth.uid()') IS NULL THEN
        RETURN NULL;
    END IF;
    RETURN auth.uid();
EXCEPTION WHEN invalid_text_representation OR invalid_parameter_value THEN
    RAISE EXCEPTION 'the request''s JWT names no user: its sub is not a user id (a uuid)'
        USING ERRCODE = 'insufficient_privilege',
              HINT = 'sign in again: the phone''s requests carry the JWT Supabase Auth issued';
END
$$;
