"""What the phone receives live, proven on the chain Supabase Realtime runs.

Realtime's postgres_changes reads the publication supabase_realtime through
logical decoding with wal2json (format-version 2, add-tables set to the tables
pg_publication_tables lists for it: wal2json ignores publications), then sends
each change to each subscriber whose role and JWT may SELECT the row (it runs
SET ROLE, sets request.jwt.claims and selects the row by its primary key), with
the columns that role may select. Here on a private PostgreSQL 15 cluster with
wal_level = logical, migrated as Supabase's database is.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import psycopg
import pytest

from mobvibe.sql.migrate import migrate
from tests.support import pg15
from tests.support.supabase import jwt, make_api_roles, make_auth
from tests.support.waiting import wait_for

pytestmark = pytest.mark.skipif(
    not pg15.available(),
    reason=f"PostgreSQL 15's binaries are not in {pg15.BIN}: the Realtime chain needs a "
    "private cluster with wal_level = logical",
)

SLOT = "mobvibe_realtime"


@dataclass(frozen=True)
class Change:
    """One change of the slot, as Realtime receives it."""

    table: str
    action: str
    columns: dict[str, Any]

    @property
    def key(self) -> Any:
        return self.columns["id"]


@pytest.fixture(scope="module")
def database() -> Iterator[str]:
    if not (pg15.LIB / "wal2json.so").exists():
        pytest.fail("wal2json is not installed for PostgreSQL 15: run `make wal2json`")
    with pg15.private_cluster(wal_level="logical", max_replication_slots="4") as url:
        with psycopg.connect(url, autocommit=True) as conn:
            allow_wal2json(conn)
            make_api_roles(conn)
            make_auth(conn)
            migrate(conn)
            conn.execute(
                "CREATE PUBLICATION supabase_realtime FOR TABLE coding_jobs, coding_job_events"
            )
            conn.execute("SELECT pg_create_logical_replication_slot(%s, 'wal2json')", [SLOT])
        yield url


def allow_wal2json(conn: psycopg.Connection[Any]) -> None:
    """A server whose logical decoding takes only the output plugins it lists (a hardened
    build's output_plugin_libraries) lists wal2json, as Supabase's does."""
    try:
        conn.execute("SHOW output_plugin_libraries")
    except psycopg.errors.UndefinedObject:
        return
    conn.execute("ALTER SYSTEM SET output_plugin_libraries = 'wal2json'")
    conn.execute("SELECT pg_reload_conf()")
    wait_for(
        lambda: one(conn, "SHOW output_plugin_libraries") == "wal2json",
        message="the server to read its configuration again",
    )


def changes(conn: psycopg.Connection[Any]) -> list[Change]:
    """The slot's changes since the last read, as Realtime asks wal2json for them."""
    tables = ",".join(
        f"{schema}.{table}"
        for schema, table in conn.execute(
            "SELECT schemaname, tablename FROM pg_publication_tables "
            "WHERE pubname = 'supabase_realtime' ORDER BY 1, 2"
        ).fetchall()
    )
    rows = conn.execute(
        "SELECT data FROM pg_logical_slot_get_changes(%s, NULL, NULL, 'format-version', '2', "
        "'include-pk', 'true', 'include-transaction', 'false', 'include-type-oids', 'true', "
        "'actions', 'insert,update,delete', 'add-tables', %s)",
        [SLOT, tables],
    ).fetchall()
    found = []
    for (data,) in rows:
        record = json.loads(data)
        columns = {c["name"]: c["value"] for c in record.get("columns", [])}
        found.append(Change(record["table"], record["action"], columns))
    return found


def delivered_to(conn: psycopg.Connection[Any], user: uuid.UUID, change: Change) -> bool:
    """Realtime's check: may the subscriber (authenticated, this user's JWT) select the row?"""
    with conn.transaction():
        conn.execute("SET LOCAL ROLE authenticated")
        conn.execute("SELECT set_config('request.jwt.claims', %s, true)", [json.dumps(jwt(user))])
        query = f"SELECT 1 FROM public.{change.table} WHERE id = %s"  # noqa: S608 - two names
        return conn.execute(query.encode(), [change.key]).fetchone() is not None


def phone_columns(conn: psycopg.Connection[Any], table: str) -> set[str]:
    """The columns Realtime sends a subscriber of role authenticated: those it may select."""
    rows = conn.execute(
        "SELECT attname FROM pg_attribute WHERE attrelid = %s::regclass AND attnum > 0 "
        "AND NOT attisdropped AND has_column_privilege('authenticated', attrelid, attnum, "
        "'SELECT')",
        [f"public.{table}"],
    ).fetchall()
    return {name for (name,) in rows}


def one(conn: psycopg.Connection[Any], statement: str, *params: Any) -> Any:
    row = conn.execute(statement.encode(), params).fetchone()
    assert row is not None
    return row[0]


def test_the_owner_receives_every_transition_and_progress_event_and_no_lease_token(
    database: str,
) -> None:
    alice, bob = uuid.uuid4(), uuid.uuid4()
    with psycopg.connect(database, autocommit=True) as conn:
        changes(conn)  # what migrating wrote
        session = one(
            conn,
            "INSERT INTO coding_sessions (id, user_id) VALUES (gen_random_uuid(), %s) RETURNING id",
            alice,
        )
        theirs = one(
            conn,
            "INSERT INTO coding_sessions (id, user_id) VALUES (gen_random_uuid(), %s) RETURNING id",
            bob,
        )
        job = one(
            conn,
            "INSERT INTO coding_jobs (session_id, prompt) VALUES (%s, 'build') RETURNING id",
            session,
        )
        other = one(
            conn,
            # Due tomorrow: the claims below take the owner's job, whose user has
            # started before (users take turns).
            "INSERT INTO coding_jobs (session_id, prompt, run_at) "
            "VALUES (%s, 'theirs', now() + interval '1 day') RETURNING id",
            theirs,
        )
        cancelled = one(
            conn,
            "INSERT INTO coding_jobs (session_id, prompt) VALUES (%s, 'never mind') RETURNING id",
            session,
        )
        assert one(conn, "SELECT cancel_job(%s)", cancelled) is True
        leases = []
        for attempt, ending in ((1, "release"), (2, "complete")):
            claimed = conn.execute(
                "SELECT job_id, lease_token FROM claim_next_job('rt') WHERE job_id = %s", [job]
            ).fetchone()
            assert claimed is not None, f"attempt {attempt} not claimed"
            lease = claimed[1]
            leases.append(str(lease))
            for pct in (10, 90):
                one(
                    conn,
                    "SELECT queue_add_events(%s, %s, ARRAY['progress'], ARRAY[%s::jsonb])",
                    job,
                    lease,
                    json.dumps({"pct": pct, "attempt": attempt}),
                )
            if ending == "release":
                assert one(conn, "SELECT queue_release_job(%s, %s, 'pod stopping')", job, lease)
            else:
                assert (
                    one(
                        conn,
                        "SELECT queue_end_attempt(%s, %s, 'completed', NULL, 'done')",
                        job,
                        lease,
                    )
                    == "completed"
                )
        seen = changes(conn)

        jobs = [c for c in seen if c.table == "coding_jobs" and c.key == str(job)]
        statuses = [c.columns["status"] for c in jobs]
        transitions = [s for i, s in enumerate(statuses) if i == 0 or s != statuses[i - 1]]
        assert transitions == ["pending", "processing", "pending", "processing", "completed"]
        assert [c.columns["status"] for c in seen if c.key == str(cancelled)][-1] == "cancelled"
        progress = [
            c.columns["payload"]
            for c in seen
            if c.table == "coding_job_events" and c.columns["job_id"] == str(job)
        ]
        assert [json.loads(p) for p in progress] == [
            {"pct": 10, "attempt": 1},
            {"pct": 90, "attempt": 1},
            {"pct": 10, "attempt": 2},
            {"pct": 90, "attempt": 2},
        ]

        mine = [c for c in seen if c.columns.get("session_id") == str(session)]
        bobs = [c for c in seen if c.columns.get("session_id") == str(theirs)]
        assert mine and bobs
        for change in mine:
            assert delivered_to(conn, alice, change), change
            assert not delivered_to(conn, bob, change), change
        for change in bobs:
            assert delivered_to(conn, bob, change) and not delivered_to(conn, alice, change)
        assert {c.key for c in bobs if c.table == "coding_jobs"} == {str(other)}

        for table in ("coding_jobs", "coding_job_events"):
            sent = phone_columns(conn, table)
            assert "lease_token" not in sent
            for change in (c for c in mine if c.table == table):
                values = {str(v) for name, v in change.columns.items() if name in sent}
                assert not values & set(leases), f"a lease token in {table}: {change}"
            assert sent >= (
                {"id", "status", "session_id"}
                if table == "coding_jobs"
                else {"id", "job_id", "payload"}
            )
