"""A database set up as Supabase sets one up: the API roles (cluster-wide), schema auth
with auth.uid() from the request's JWT, and a request made as the phone."""

from __future__ import annotations

import json
import uuid
from typing import Any

import psycopg
from psycopg import sql

API_ROLES = ("anon", "authenticated", "service_role")

# Supabase's auth.uid(): the JWT's sub, as a uuid.
AUTH_UID = """
CREATE SCHEMA IF NOT EXISTS auth;
CREATE OR REPLACE FUNCTION auth.uid() RETURNS uuid LANGUAGE sql STABLE AS $$
    SELECT (nullif(current_setting('request.jwt.claims', true), '')::json ->> 'sub')::uuid
$$;
GRANT USAGE ON SCHEMA auth TO anon, authenticated, service_role;
GRANT EXECUTE ON FUNCTION auth.uid() TO anon, authenticated, service_role;
"""


def make_api_roles(conn: psycopg.Connection[Any]) -> None:
    """anon, authenticated and service_role, NOLOGIN as Supabase makes them."""
    for name in API_ROLES:
        conn.execute(sql.SQL("CREATE ROLE {} NOLOGIN").format(sql.Identifier(name)))


def make_auth(conn: psycopg.Connection[Any]) -> None:
    """Schema auth and auth.uid() in this database (the roles must exist)."""
    conn.execute(AUTH_UID.encode())


def drop_api_roles(conn: psycopg.Connection[Any]) -> None:
    """Drop the API roles (what they own or were granted in this database first)."""
    names = sql.SQL(", ").join(map(sql.Identifier, API_ROLES))
    conn.execute(sql.SQL("DROP OWNED BY {}").format(names))
    conn.execute(sql.SQL("DROP ROLE {}").format(names))


def act_as(conn: psycopg.Connection[Any], role: str, claims: dict[str, Any] | None) -> None:
    """Make `conn` (a login that is a NOINHERIT member of `role`) a request as PostgREST
    and Realtime make one: SET ROLE, then the JWT's claims (None: no JWT)."""
    conn.execute(sql.SQL("SET ROLE {}").format(sql.Identifier(role)))
    text = "" if claims is None else json.dumps(claims)
    conn.execute("SELECT set_config('request.jwt.claims', %s, false)", [text])


def jwt(user: uuid.UUID | str) -> dict[str, Any]:
    """The claims of a signed-in user's JWT."""
    return {"sub": str(user), "role": "authenticated", "aud": "authenticated"}
