"""No function of the queue runs code that a role could have planted.

A role with CREATE on public plants shadows of every built-in the functions and
triggers call, functions, aggregates and operators, each recording who ran it.
The whole lifecycle then runs, as the owner and as the four roles: no shadow
ever runs. A static check backs it: every function pins search_path =
pg_catalog, pg_temp, except queue_now(), which must stay inlinable and so names
everything it uses with its schema.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import psycopg
import pytest
from psycopg import sql

from mobvibe.reaper import doctor, sweep
from mobvibe.sql import store
from mobvibe.sql.jobs import NewJob
from mobvibe.vocabulary import EndReason
from tests.support.roles import LoginRoles
from tests.support.sqlclock import T0, migrate_with_test_clock, set_clock

# (name, argument types, result type, the real thing in pg_catalog over $1, $2 ...)
SHADOW_FUNCTIONS = [
    ("power", "integer, integer", "double precision", "pg_catalog.power($1::float8, $2::float8)"),
    ("power", "double precision, double precision", "double precision", "pg_catalog.power($1, $2)"),
    ("power", "numeric, numeric", "numeric", "pg_catalog.power($1, $2)"),
    (
        "json_build_object",
        "text, uuid, text, uuid, text, smallint",
        "json",
        "pg_catalog.json_build_object($1, $2, $3, $4, $5, $6)",
    ),
    (
        "json_build_object",
        "text, uuid, text, uuid, text, integer",
        "json",
        "pg_catalog.json_build_object($1, $2, $3, $4, $5, $6)",
    ),
    (
        "json_build_object",
        "text, uuid, text, uuid, text, text, text, text",
        "json",
        "pg_catalog.json_build_object($1, $2, $3, $4, $5, $6, $7, $8)",
    ),
    ("now", "", "timestamptz", "pg_catalog.now()"),
    ("gen_random_uuid", "", "uuid", "pg_catalog.gen_random_uuid()"),
    ("random", "", "double precision", "pg_catalog.random()"),
    ("make_interval", "secs double precision", "interval", "pg_catalog.make_interval(secs => $1)"),
    ("pg_notify", "text, text", "void", "pg_catalog.pg_notify($1, $2)"),
    ("current_setting", "text", "text", "pg_catalog.current_setting($1)"),
    ("current_setting", "text, boolean", "text", "pg_catalog.current_setting($1, $2)"),
    ("set_config", "text, text, boolean", "text", "pg_catalog.set_config($1, $2, $3)"),
    ("left", "text, integer", "text", "pg_catalog.left($1, $2)"),
    ("btrim", "text", "text", "pg_catalog.btrim($1)"),
    ("extract", "text, interval", "numeric", "pg_catalog.extract($1, $2)"),
    ("extract", "text, timestamptz", "numeric", "pg_catalog.extract($1, $2)"),
    ("to_regclass", "text", "regclass", "pg_catalog.to_regclass($1)"),
    ("format", "text, text", "text", "pg_catalog.format($1, $2)"),
    # sessions, cancel, attempts and events (0006)
    (
        "json_build_object",
        "text, uuid, text, uuid",
        "json",
        "pg_catalog.json_build_object($1, $2, $3, $4)",
    ),
    (
        "json_build_object",
        "text, uuid, text, uuid, text, bigint, text, text",
        "json",
        "pg_catalog.json_build_object($1, $2, $3, $4, $5, $6, $7, $8)",
    ),
    ("cardinality", "uuid[]", "integer", "pg_catalog.cardinality($1)"),
    ("cardinality", "text[]", "integer", "pg_catalog.cardinality($1)"),
    ("cardinality", "jsonb[]", "integer", "pg_catalog.cardinality($1)"),
    ("unnest", "uuid[]", "SETOF uuid", "pg_catalog.unnest($1)"),
    ("unnest", "text[]", "SETOF text", "pg_catalog.unnest($1)"),
    ("unnest", "jsonb[]", "SETOF jsonb", "pg_catalog.unnest($1)"),
    ("nextval", "regclass", "bigint", "pg_catalog.nextval($1)"),
    ("pg_get_serial_sequence", "text, text", "text", "pg_catalog.pg_get_serial_sequence($1, $2)"),
    ("pg_current_xact_id_if_assigned", "", "xid8", "pg_catalog.pg_current_xact_id_if_assigned()"),
    ("octet_length", "text", "integer", "pg_catalog.octet_length($1)"),
    ("char_length", "text", "integer", "pg_catalog.char_length($1)"),
    ("right", "text, integer", "text", 'pg_catalog."right"($1, $2)'),
]

# (operator, left type, right type, result type)
SHADOW_OPERATORS = [
    *(("=", t, t, "boolean") for t in ("text", "uuid", "integer", "smallint", "timestamptz")),
    ("<>", "text", "text", "boolean"),
    ("<>", "integer", "integer", "boolean"),
    *((op, "timestamptz", "timestamptz", "boolean") for op in ("<", "<=", ">", ">=")),
    *((op, "integer", "integer", "boolean") for op in ("<", "<=", ">", ">=")),
    ("+", "integer", "integer", "integer"),
    ("+", "timestamptz", "interval", "timestamptz"),
    ("-", "integer", "integer", "integer"),
    ("-", "timestamptz", "interval", "timestamptz"),
    ("-", "timestamptz", "timestamptz", "interval"),
    ("*", "numeric", "double precision", "double precision"),
    ("*", "double precision", "double precision", "double precision"),
    ("*", "double precision", "interval", "interval"),
    ("||", "text", "text", "text"),
    ("||", "text", "uuid", "text"),
    ("||", "text", "integer", "text"),
    ("||", "text", "timestamptz", "text"),
    # sessions (0006): seq, counts against max_concurrency, the output's tail, xmin
    ("<", "bigint", "bigint", "boolean"),
    (">", "bigint", "bigint", "boolean"),
    (">=", "bigint", "integer", "boolean"),
    ("/", "integer", "integer", "integer"),
    ("=", "xid", "xid", "boolean"),
]

# (aggregate, argument type, state type, transition over (state, value), initial state)
SHADOW_AGGREGATES = [
    ("count", "*", "bigint", "$1 OPERATOR(pg_catalog.+) 1", "0"),
    ("count", "uuid", "bigint", "$1 OPERATOR(pg_catalog.+) 1", "0"),
    ("min", "timestamptz", "timestamptz", "pg_catalog.least($1, $2)", None),
    ("max", "timestamptz", "timestamptz", "pg_catalog.greatest($1, $2)", None),
    ("max", "integer", "integer", "pg_catalog.greatest($1, $2)", None),
    ("min", "text", "text", "pg_catalog.least($1, $2)", None),
]


def _record(name: str) -> str:
    """The statement a shadow runs first: who ran which shadow. Built from this module's
    own constants, like every shadow's definition."""
    record = sql.SQL("INSERT INTO public.shadow_calls (shadow, by_role) VALUES ({}, current_user);")
    return record.format(sql.Literal(name)).as_string()


def plant_shadows(attacker: psycopg.Connection[Any]) -> int:
    """Create every shadow in public as the attacker; how many."""
    attacker.execute(
        "CREATE TABLE public.shadow_calls (shadow text, by_role text);"
        "GRANT INSERT, SELECT ON public.shadow_calls TO PUBLIC"
    )
    planted = 0
    for name, args, result, real in SHADOW_FUNCTIONS:
        body = f"BEGIN {_record(f'{name}({args})')} RETURN {real}; END"
        if result == "void":
            body = f"BEGIN {_record(f'{name}({args})')} PERFORM {real}; END"
        elif result.startswith("SETOF"):
            body = f"BEGIN {_record(f'{name}({args})')} RETURN QUERY SELECT {real}; END"
        attacker.execute(
            f'CREATE FUNCTION public."{name}"({args}) RETURNS {result} LANGUAGE plpgsql '
            f"SET search_path = pg_catalog AS $shadow$ {body} $shadow$"
        )
        planted += 1
    for i, (op, left, right, result) in enumerate(SHADOW_OPERATORS):
        attacker.execute(
            f"CREATE FUNCTION public.shadow_op_{i}(a {left}, b {right}) RETURNS {result} "
            f"LANGUAGE plpgsql SET search_path = pg_catalog AS $shadow$ BEGIN "
            f"{_record(f'{op}({left}, {right})')} "
            f"RETURN a OPERATOR(pg_catalog.{op}) b; END $shadow$"
        )
        attacker.execute(
            f"CREATE OPERATOR public.{op} (LEFTARG = {left}, RIGHTARG = {right}, "
            f"FUNCTION = public.shadow_op_{i})"
        )
        planted += 1
    for i, (name, arg, state, step, initial) in enumerate(SHADOW_AGGREGATES):
        params = state if arg == "*" else f"{state}, {arg}"
        attacker.execute(
            f"CREATE FUNCTION public.shadow_step_{i}({params}) RETURNS {state} LANGUAGE plpgsql "
            f"SET search_path = pg_catalog AS $shadow$ BEGIN "
            f"{_record(f'{name}({arg})')} RETURN {step}; END $shadow$"
        )
        init = "" if initial is None else f", INITCOND = '{initial}'"
        attacker.execute(
            f"CREATE AGGREGATE public.{name}({arg}) (SFUNC = public.shadow_step_{i}, "
            f"STYPE = {state}{init})"
        )
        planted += 1
    return planted


def shadow_calls(conn: psycopg.Connection[Any]) -> list[tuple[str, str]]:
    rows = conn.execute(
        "SELECT shadow, by_role FROM public.shadow_calls ORDER BY shadow, by_role"
    ).fetchall()
    return [(str(a), str(b)) for a, b in rows]


@dataclass
class Crew:
    """A connection per job: the owner's for every one, or one per group role."""

    producer: psycopg.Connection[Any]
    worker: psycopg.Connection[Any]
    monitor: psycopg.Connection[Any]
    operator: psycopg.Connection[Any]

    def at(self, when: Any) -> None:
        for conn in {id(c): c for c in vars(self).values()}.values():
            set_clock(conn, when)


def lifecycle(crew: Crew) -> None:
    """Every function of the queue, through the store as the tools call them."""
    p, w, m, o = crew.producer, crew.worker, crew.monitor, crew.operator
    crew.at(T0)
    session = uuid.uuid4()
    store.create_session(p, session, max_concurrency=4)
    # claimed in this order: priority 5, 4, 3, 2 (four may run at once)
    first = store.enqueue(p, NewJob("first", session, priority=5, max_retries=2))
    store.enqueue_many(
        p, [NewJob("second", priority=4), NewJob("third", priority=3, max_retries=1)], [session] * 2
    )
    p.execute(
        "INSERT INTO coding_jobs (session_id, prompt, priority) VALUES (%s, 'plain', 2)",
        [session],
    )

    job = store.claim(w, "hijack-1")
    assert job is not None and job.id == first
    assert store.heartbeat(w, job.id, job.lease_token)
    assert store.claims_of_worker(w, "hijack-1")
    assert store.fail(w, job.id, "retry me", job.lease_token) is True  # the backoff
    # queue_complete_and_claim has no caller in the tools; it stays in the contract
    chained = w.execute(
        "SELECT completed, job_id, lease_token FROM queue_complete_and_claim(%s, %s, 'hijack-1')",
        [uuid.uuid4(), uuid.uuid4()],
    ).fetchone()
    assert chained is not None and chained[0] is False and chained[1] is not None
    assert store.complete(w, chained[1], chained[2])
    third = store.claim(w, "hijack-2")
    assert third is not None
    assert store.fail(w, third.id, "dead", third.lease_token) is False  # the dead letter
    plain = store.claim(w, "hijack-3")
    assert plain is not None
    assert store.release(w, plain.id, plain.lease_token, "released at shutdown")

    assert store.next_run(w).next_run_at is not None
    assert store.stats(m).failed_count == 1
    store.waiting_retries(w)
    store.queue_settings(m)
    store.last_reaper_sweep(m)

    assert store.requeue_failed(o, third.id)
    assert store.fail(o, third.id, "by hand", None) is False  # the operator's path
    assert store.complete(o, plain.id, None)
    store.list_failed(o, 10)
    store.failed_ids(o, timedelta(0))

    again = store.claim(w, "hijack-4")  # the first job, its retry due in an hour's time
    crew.at(T0 + timedelta(hours=1))
    again = again or store.claim(w, "hijack-4")
    assert again is not None
    sessions_cancel_attempts_and_events(crew)
    crew.at(T0 + timedelta(days=40))  # the attempt expires; the finished jobs age
    result = sweep.run_once(w, sweep.ReaperSettings(name="hijack", batch_size=10, prune_batch=10))
    # completed: second, plain and one of the session's below; failed: third;
    # cancelled: one of the session's below
    assert result.requeued + result.dead_lettered == 1 and result.pruned == 5
    store.set_queue_config(o, store.ConfigChange(backoff_base=5, retain_failed=0))
    assert store.purge_failed(o, timedelta(0), 10) == 1
    doctor.diagnose(o, 5)


def sessions_cancel_attempts_and_events(crew: Crew) -> None:
    """A session's prompts in order, a double tap, cancels, attempts, events (0006)."""
    p, w, o = crew.producer, crew.worker, crew.operator
    session = uuid.uuid4()
    store.create_session(p, session)
    tap = NewJob("double tap", session, idempotency_key="tap-1")
    first = store.enqueue(p, tap)
    assert store.enqueue(p, tap) == first
    second, third = store.enqueue_many(
        p, [NewJob("second", idempotency_key="tap-2"), NewJob("third")], [session] * 2
    )
    assert store.enqueue_many(p, [NewJob("again", idempotency_key="tap-2")], [session]) == [second]
    o.execute(  # an operator's act: the second may start too
        "UPDATE coding_sessions SET max_concurrency = 2 WHERE id = %s", [session]
    )

    job = store.claim(w, "hijack-5")
    assert job is not None and job.id == first
    renewals = store.renew_leases(w, [store.Lease(job.id, job.lease_token)])
    assert renewals == [store.Renewal(job.id, True, False)]
    assert store.add_events(w, job.id, job.lease_token, [("progress", {"pct": 50})]) == 1
    ended = store.end_and_claim(
        w, job.id, job.lease_token, EndReason.COMPLETED, None, "done", "hijack-5"
    )
    assert ended.status == "completed" and ended.next_job is not None
    assert ended.next_job.id == second
    assert store.cancel(p, second)  # requested: its supervisor is told
    lease = ended.next_job.lease_token
    output = "é" * 40_000  # 80,000 bytes: the end is kept
    assert store.end_attempt(w, second, lease, EndReason.ERROR, "boom", output) == "cancelled"
    assert store.cancel_session(p, session) == 1  # the third, pending
    assert store.retry_job(o, third)
    assert store.attempts(p, first) and store.events(p, first)
    assert store.cancel(p, third) and store.retry_job(o, third)


@pytest.fixture
def hijack_db(
    new_database: Callable[..., str],
) -> Iterator[tuple[psycopg.Connection[Any], psycopg.Connection[Any], LoginRoles]]:
    """(owner, attacker, login roles) on a database of its own where the attacker, a role
    with CREATE on public, has planted its shadows."""
    url = new_database("mobvibe_hijack")
    with psycopg.connect(url, autocommit=True) as owner:
        migrate_with_test_clock(owner)
        roles = LoginRoles(owner, url)
        try:
            attacker_url = roles.make(prefix="mobvibe_attacker")
            attacker_name = psycopg.conninfo.conninfo_to_dict(attacker_url)["user"]
            owner.execute(
                sql.SQL("GRANT CREATE ON SCHEMA public TO {}").format(
                    sql.Identifier(str(attacker_name))
                )
            )
            with psycopg.connect(attacker_url, autocommit=True) as attacker:
                assert plant_shadows(attacker) > 40
                yield owner, attacker, roles
        finally:
            roles.drop()


def test_the_shadows_are_live_for_whoever_calls_them_unqualified(
    hijack_db: tuple[psycopg.Connection[Any], psycopg.Connection[Any], LoginRoles],
) -> None:
    _, attacker, _ = hijack_db
    attacker.execute("SELECT power(2, 10), 'job ' || gen_random_uuid()")
    assert {shadow for shadow, _ in shadow_calls(attacker)} == {
        "power(integer, integer)",
        "||(text, uuid)",
    }


def test_no_shadow_runs_in_the_whole_lifecycle_as_the_owner(
    hijack_db: tuple[psycopg.Connection[Any], psycopg.Connection[Any], LoginRoles],
) -> None:
    owner, attacker, _ = hijack_db
    lifecycle(Crew(owner, owner, owner, owner))
    assert shadow_calls(attacker) == []


def test_no_shadow_runs_in_the_whole_lifecycle_as_the_four_roles(
    hijack_db: tuple[psycopg.Connection[Any], psycopg.Connection[Any], LoginRoles],
) -> None:
    _, attacker, roles = hijack_db
    urls = [roles.make(f"mobvibe_{role}") for role in ("producer", "worker", "monitor")]
    urls.append(roles.make("mobvibe_operator", inherit=False))  # and one through SET ROLE
    conns = [psycopg.connect(url, autocommit=True) for url in urls]
    try:
        conns[-1].execute("SET ROLE mobvibe_operator")
        lifecycle(Crew(*conns))
    finally:
        for conn in conns:
            conn.close()
    assert shadow_calls(attacker) == []


def test_no_shadow_runs_for_a_caller_whose_search_path_puts_public_first(
    hijack_db: tuple[psycopg.Connection[Any], psycopg.Connection[Any], LoginRoles],
) -> None:
    """queue_now() is inlined into the caller's query, parsed in the caller's search_path."""
    owner, attacker, _ = hijack_db
    session = uuid.uuid4()
    store.create_session(owner, session)
    job = store.enqueue(owner, NewJob("x", session))
    owner.execute("SET search_path = public, pg_catalog")
    try:
        for clock in ("", T0.isoformat()):
            owner.execute("SELECT pg_catalog.set_config('mobvibe.now', %s, false)", [clock])
            owner.execute("SELECT public.queue_now()")
            owner.execute("SELECT * FROM public.get_queue_stats()")
            owner.execute("SELECT public.queue_next_run_at()")
            owner.execute("SELECT * FROM public.queue_settings()")
        claimed = owner.execute("SELECT job_id, lease_token FROM public.claim_next_job()")
        row = claimed.fetchone()
        assert row is not None and row[0] == job
        owner.execute("SELECT public.fail_job(%s, 'boom'::text, %s, 'error'::text)", row)
        owner.execute("SELECT * FROM public.queue_reap_expired()")
        owner.execute("SELECT public.queue_prune('completed'::text)")
    finally:
        owner.execute("RESET search_path")
    assert shadow_calls(attacker) == []


# -- the static check ------------------------------------------------------------------------

PINNED = ["search_path=pg_catalog, pg_temp"]


def test_every_function_of_the_queue_pins_its_search_path_to_pg_catalog(conn: Any) -> None:
    rows = conn.execute(
        "SELECT p.oid::regprocedure::text, p.proname, p.proconfig FROM pg_proc p "
        "WHERE p.pronamespace = 'public'::regnamespace ORDER BY 1"
    ).fetchall()
    assert len(rows) > 20
    unpinned = [sig for sig, name, config in rows if name != "queue_now" and config != PINNED]
    assert unpinned == []


def test_queue_now_is_inlinable_and_names_everything_with_its_schema(conn: Any) -> None:
    config, definer, language, body = conn.execute(
        "SELECT p.proconfig, p.prosecdef, l.lanname, p.prosrc FROM pg_proc p "
        "JOIN pg_language l ON l.oid = p.prolang WHERE p.oid = 'public.queue_now()'::regprocedure"
    ).fetchone()
    assert (config, definer, language) == (None, False, "sql")
    code = re.sub(r"'[^']*'", "''", body)  # string literals aside
    code = re.sub(r"OPERATOR\(pg_catalog\.[^)\s]+\)", " ", code)
    assert not re.search(r"[-+*/<>=~!@#%^&|`?]", code), f"an unqualified operator in {body}"
    calls = re.findall(r"([\w.]+)\s*\(", code)
    assert calls and all(c.startswith(("pg_catalog.", "public.")) for c in calls), calls
    plan = "\n".join(r[0] for r in conn.execute("EXPLAIN VERBOSE SELECT queue_now()"))
    assert "queue_now" not in plan, f"not inlined:\n{plan}"
