"""The role matrix: each of the four group roles may do exactly what its job includes.

Every action any role may take is tried by every role, as a login role that is a
member of the group and as a NOINHERIT login role that takes the group with SET
ROLE (as Supabase's API does). Allowed: the action takes effect. Not allowed:
insufficient_privilege, or a false or null answer with nothing changed.

The database is one of its own, as in production: the test clock is off.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import psycopg
import pytest
from psycopg import conninfo, sql

from mobvibe.sql.migrate import migrate
from tests.support.roles import LoginRoles
from tests.support.rows import scalar, triggers_off
from tests.support.supabase import act_as, drop_api_roles, jwt, make_api_roles, make_auth

ROLES = ("producer", "worker", "monitor", "operator")


@dataclass(frozen=True)
class Scene:
    """The jobs every action starts from; ids and the live lease."""

    session: uuid.UUID
    pending: uuid.UUID  # due now
    future: uuid.UUID  # pending, due in a day
    running: uuid.UUID  # processing under worker w1, heartbeat just now
    lease: uuid.UUID  # the running attempt's lease
    expired: uuid.UUID  # processing under worker w2, silent for an hour
    old_completed: uuid.UUID  # completed 8 days ago (retention: 7 days)
    new_completed: uuid.UUID  # completed an hour ago
    old_failed: uuid.UUID  # dead-lettered 40 days ago (retention: 30 days)
    new_failed: uuid.UUID  # dead-lettered an hour ago
    user: uuid.UUID  # a phone user, who owns user_session (no jobs)
    user_session: uuid.UUID


SCENE = """
INSERT INTO coding_jobs (id, session_id, prompt, status, run_at, retry_count, attempt,
                         worker_id, lease_token, heartbeat_at, started_at, completed_at,
                         error_message, end_reason) VALUES
 (%(pending)s, %(session)s, 'due', 'pending', now() - interval '1 minute', 0, 0,
  NULL, NULL, NULL, NULL, NULL, NULL, NULL),
 (%(future)s, %(session)s, 'later', 'pending', now() + interval '1 day', 0, 0,
  NULL, NULL, NULL, NULL, NULL, NULL, NULL),
 (%(running)s, %(session)s, 'running', 'processing', now(), 0, 1,
  'w1', %(lease)s, now(), now(), NULL, NULL, NULL),
 (%(expired)s, %(session)s, 'silent', 'processing', now() - interval '2 hours', 0, 1,
  'w2', gen_random_uuid(), now() - interval '1 hour', now() - interval '2 hours', NULL, NULL, NULL),
 (%(old_completed)s, %(session)s, 'done long ago', 'completed', now(), 0, 1,
  NULL, NULL, NULL, NULL, now() - interval '8 days', NULL, 'completed'),
 (%(new_completed)s, %(session)s, 'done', 'completed', now(), 0, 1,
  NULL, NULL, NULL, NULL, now() - interval '1 hour', NULL, 'completed'),
 (%(old_failed)s, %(session)s, 'failed long ago', 'failed', now(), 3, 3,
  NULL, NULL, NULL, NULL, now() - interval '40 days', 'boom', 'error'),
 (%(new_failed)s, %(session)s, 'failed', 'failed', now(), 3, 3,
  NULL, NULL, NULL, NULL, now() - interval '1 hour', 'boom', 'error');
"""

# The running attempt's record and one event of it.
SCENE_ATTEMPT = (
    (
        "INSERT INTO coding_job_attempts (job_id, attempt, worker_id, started_at) "
        "VALUES (%(running)s, 1, 'w1', now())"
    ),
    (
        "INSERT INTO coding_job_events (job_id, session_id, attempt, kind, payload) "
        "VALUES (%(running)s, %(session)s, 1, 'progress', '{\"pct\": 10}')"
    ),
)

SNAPSHOT = """
SELECT (SELECT coalesce(json_agg(j ORDER BY j.id), '[]') FROM coding_jobs j)::text,
       (SELECT coalesce(json_agg(s ORDER BY s.id), '[]') FROM coding_sessions s)::text,
       (SELECT coalesce(json_agg(c), '[]') FROM queue_config c)::text,
       (SELECT coalesce(json_agg(r ORDER BY r.reaper), '[]') FROM queue_reaper_runs r)::text,
       (SELECT coalesce(json_agg(a ORDER BY a.job_id, a.attempt), '[]')
        FROM coding_job_attempts a)::text,
       (SELECT coalesce(json_agg(e ORDER BY e.id), '[]') FROM coding_job_events e)::text,
       (SELECT coalesce(json_agg(l ORDER BY l.user_id), '[]') FROM queue_user_limits l)::text,
       (SELECT coalesce(json_agg(u ORDER BY u.user_key), '[]') FROM queue_users u)::text
"""


class Ctx:
    """What an action sees: the role's connection, the owner's, and the scene."""

    def __init__(self, conn: psycopg.Connection[Any], owner: psycopg.Connection[Any], scene: Scene):
        self.conn, self.owner, self.scene = conn, owner, scene

    def one(self, statement: str, *params: Any) -> Any:
        return scalar(self.conn, statement, params)

    def status(self, job: uuid.UUID) -> str | None:
        row = self.owner.execute("SELECT status FROM coding_jobs WHERE id = %s", [job]).fetchone()
        return None if row is None else str(row[0])

    def exists(self, job: uuid.UUID) -> bool:
        return self.status(job) is not None


Action = Callable[[Ctx], bool]  # True: it took effect


def insert_session(c: Ctx) -> bool:
    c.conn.execute("INSERT INTO coding_sessions (id) VALUES (%s)", [uuid.uuid4()])
    return True


def insert_job(c: Ctx) -> bool:
    c.conn.execute(
        "INSERT INTO coding_jobs (session_id, prompt, priority, max_retries, run_at) "
        "VALUES (%s, 'from a producer', 5, 2, now())",
        [c.scene.session],
    )
    return True


def insert_job_with_state(c: Ctx) -> bool:
    c.conn.execute(
        "INSERT INTO coding_jobs (session_id, prompt, status, completed_at) "
        "VALUES (%s, 'born finished', 'completed', now())",
        [c.scene.session],
    )
    return True


def select_jobs(c: Ctx) -> bool:
    return bool(c.conn.execute("SELECT id, prompt FROM coding_jobs").fetchall())


def select_sessions(c: Ctx) -> bool:
    return bool(c.conn.execute("SELECT id FROM coding_sessions").fetchall())


def update_job(c: Ctx) -> bool:
    c.conn.execute("UPDATE coding_jobs SET status = 'completed' WHERE id = %s", [c.scene.pending])
    return c.status(c.scene.pending) == "completed"


def delete_job(c: Ctx) -> bool:
    c.conn.execute("DELETE FROM coding_jobs WHERE id = %s", [c.scene.old_failed])
    return not c.exists(c.scene.old_failed)


def update_session(c: Ctx) -> bool:
    c.conn.execute("UPDATE coding_sessions SET status = 'failed'")
    return True


def claim(c: Ctx) -> bool:
    row = c.conn.execute("SELECT job_id FROM claim_next_job('matrix')").fetchone()
    return row is not None and row[0] == c.scene.pending


def complete_with_lease(c: Ctx) -> bool:
    return c.one("SELECT complete_job(%s, %s)", c.scene.running, c.scene.lease) is True


def complete_with_null_lease(c: Ctx) -> bool:
    c.one("SELECT complete_job(%s, NULL::uuid)", c.scene.running)
    return c.status(c.scene.running) != "processing"


def complete_without_lease(c: Ctx) -> bool:
    return c.one("SELECT complete_job(%s)", c.scene.running) is True


def fail_with_lease(c: Ctx) -> bool:
    return c.one("SELECT fail_job(%s, 'x', %s)", c.scene.running, c.scene.lease) is not None


def fail_with_null_lease(c: Ctx) -> bool:
    c.one("SELECT fail_job(%s, 'x', NULL::uuid)", c.scene.running)
    return c.status(c.scene.running) != "processing"


def fail_without_lease(c: Ctx) -> bool:
    return c.one("SELECT fail_job(%s, 'x')", c.scene.running) is not None


def heartbeat(c: Ctx) -> bool:
    return c.one("SELECT queue_heartbeat(%s, %s)", c.scene.running, c.scene.lease) is True


def release(c: Ctx) -> bool:
    return c.one("SELECT queue_release_job(%s, %s)", c.scene.running, c.scene.lease) is True


def complete_and_claim(c: Ctx) -> bool:
    row = c.conn.execute(
        "SELECT completed, job_id FROM queue_complete_and_claim(%s, %s, 'matrix')",
        [c.scene.running, c.scene.lease],
    ).fetchone()
    return row == (True, c.scene.pending)


def claims_of_worker(c: Ctx) -> bool:
    rows = c.conn.execute("SELECT job_id, attempt FROM queue_claims_of_worker('w1')")
    return rows.fetchall() == [(c.scene.running, 1)]


def select_lease_tokens(c: Ctx) -> bool:
    """A lease token is a secret of its attempt: no role reads one from the table."""
    return bool(c.conn.execute("SELECT lease_token FROM coding_jobs").fetchall())


def end_attempt_knowing_ids(c: Ctx) -> bool:
    """The attack of a stolen worker login: it knows the job id and the worker id of
    another pod's attempt, and tries every id it can read as the lease."""
    found: set[uuid.UUID] = {c.scene.running}
    for statement in (
        "SELECT job_id FROM queue_claims_of_worker('w1')",
        "SELECT id, session_id FROM coding_jobs",
        "SELECT job_id FROM coding_job_attempts",
        "SELECT id FROM coding_sessions",
    ):
        try:
            for row in c.conn.execute(statement).fetchall():
                found.update(v for v in row if isinstance(v, uuid.UUID))
        except psycopg.errors.InsufficientPrivilege:
            pass
    for guess in found:
        try:
            c.one("SELECT queue_end_attempt(%s, %s, 'error', 'stolen')", c.scene.running, guess)
            c.one("SELECT queue_release_job(%s, %s)", c.scene.running, guess)
        except psycopg.errors.InsufficientPrivilege:
            pass
    return c.status(c.scene.running) != "processing"


def reap(c: Ctx) -> bool:
    """The expired attempt is requeued; the live one is not."""
    rows = c.conn.execute("SELECT job_id FROM queue_reap_expired()").fetchall()
    assert c.status(c.scene.running) == "processing", "a live attempt was reaped"
    return rows == [(c.scene.expired,)] and c.status(c.scene.expired) == "pending"


def reap_early(c: Ctx) -> bool:
    """The attack: a live attempt (silent for a second) expired by a short timeout."""
    c.conn.execute("SELECT * FROM queue_reap_expired(100000)")
    return c.status(c.scene.running) != "processing"


def prune(c: Ctx) -> bool:
    """The finished jobs older than the retention go, the others stay."""
    done = c.one("SELECT queue_prune('completed')")
    failed = c.one("SELECT queue_prune('failed', 10)")
    assert c.exists(c.scene.new_completed) and c.exists(c.scene.new_failed), "young jobs pruned"
    return (done, failed) == (1, 1) and not c.exists(c.scene.old_completed)


def purge(c: Ctx) -> bool:
    deleted = c.one("SELECT queue_purge_failed('0 s')")
    return deleted == 2 and not c.exists(c.scene.new_failed)


def requeue(c: Ctx) -> bool:
    return c.one("SELECT queue_requeue_failed(%s)", c.scene.old_failed) is True


def record_reaper_run(c: Ctx) -> bool:
    c.conn.execute("SELECT queue_record_reaper_run('matrix', 1, 0, 2)")
    row = c.owner.execute("SELECT requeued, pruned FROM queue_reaper_runs").fetchone()
    return row == (1, 2)


def update_config(c: Ctx) -> bool:
    cur = c.conn.execute(
        "UPDATE queue_config SET backoff_base = '5 s', backoff_cap = '1 min', "
        "backoff_jitter = 0, heartbeat_timeout = '40 s', retain_completed = '1 day', "
        "retain_failed = NULL"
    )
    return cur.rowcount == 1


def switch_test_clock(c: Ctx) -> bool:
    c.conn.execute("UPDATE queue_config SET test_clock = true")
    return True


def move_clock(c: Ctx) -> bool:
    """SET mobvibe.now far ahead, then claim and reap as far as the role may: did time move?"""
    c.conn.execute("SET mobvibe.now = '2999-01-01 00:00:00+00'")
    try:
        moved = c.one("SELECT queue_now() > now() + interval '1 year'") is True
        for call in (
            "SELECT * FROM claim_next_job('matrix')",
            "SELECT * FROM queue_reap_expired()",
        ):
            try:
                c.conn.execute(call)
            except psycopg.errors.InsufficientPrivilege:
                pass
        return (
            moved
            or c.status(c.scene.future) != "pending"
            or c.status(c.scene.running) != "processing"
        )
    finally:
        c.conn.execute("RESET mobvibe.now")


def stats(c: Ctx) -> bool:
    row = c.conn.execute("SELECT pending_count, failed_count FROM get_queue_stats()").fetchone()
    return row == (2, 2)


def next_run_at(c: Ctx) -> bool:
    return c.one("SELECT queue_next_run_at()") is not None


def due_jobs(c: Ctx) -> bool:
    return c.one("SELECT queue_due_jobs(10)") is not None


def settings(c: Ctx) -> bool:
    row = c.conn.execute("SELECT schema_version, heartbeat_timeout FROM queue_settings()")
    version, timeout = row.fetchone() or (None, None)
    return version is not None and version >= 5 and timeout is not None


def select_reaper_runs(c: Ctx) -> bool:
    c.conn.execute("SELECT * FROM queue_reaper_runs").fetchall()
    return True


def select_migrations(c: Ctx) -> bool:
    return bool(c.conn.execute("SELECT version FROM queue_migrations").fetchall())


def select_config(c: Ctx) -> bool:
    return bool(c.conn.execute("SELECT * FROM queue_config").fetchall())


# -- sessions, cancel, attempts and events (0006) ----------------------------------------------


def insert_session_with_concurrency(c: Ctx) -> bool:
    c.conn.execute(
        "INSERT INTO coding_sessions (id, max_concurrency) VALUES (%s, 3)", [uuid.uuid4()]
    )
    return True


def insert_job_with_key(c: Ctx) -> bool:
    c.conn.execute(
        "INSERT INTO coding_jobs (session_id, prompt, idempotency_key) VALUES (%s, 'tap', 'k')",
        [c.scene.session],
    )
    return True


def insert_job_cancelled(c: Ctx) -> bool:
    c.conn.execute(
        "INSERT INTO coding_jobs (session_id, prompt, status, completed_at) "
        "VALUES (%s, 'born cancelled', 'cancelled', now())",
        [c.scene.session],
    )
    return True


def insert_job_with_output(c: Ctx) -> bool:
    c.conn.execute(
        "INSERT INTO coding_jobs (session_id, prompt, output, cancel_requested_at) "
        "VALUES (%s, 'born done', 'out', now())",
        [c.scene.session],
    )
    return True


def update_max_concurrency(c: Ctx) -> bool:
    cur = c.conn.execute(
        "UPDATE coding_sessions SET max_concurrency = 5 WHERE id = %s", [c.scene.session]
    )
    return cur.rowcount == 1


def cancel_pending(c: Ctx) -> bool:
    return c.one("SELECT cancel_job(%s)", c.scene.pending) is True


def cancel_running(c: Ctx) -> bool:
    changed = c.one("SELECT cancel_job(%s)", c.scene.running) is True
    requested = c.owner.execute(
        "SELECT cancel_requested_at IS NOT NULL FROM coding_jobs WHERE id = %s", [c.scene.running]
    ).fetchone()
    return changed and requested == (True,)


def cancel_session(c: Ctx) -> bool:
    """The two pending jobs cancelled, the two processing ones asked to stop."""
    return c.one("SELECT queue_cancel_session(%s)", c.scene.session) == 4


def end_attempt(c: Ctx) -> bool:
    ended = c.one(
        "SELECT queue_end_attempt(%s, %s, 'completed', NULL, 'done')",
        c.scene.running,
        c.scene.lease,
    )
    return ended == "completed"


def end_attempt_with_null_lease(c: Ctx) -> bool:
    c.one("SELECT queue_end_attempt(%s, NULL, 'completed')", c.scene.running)
    return c.status(c.scene.running) != "processing"


def end_and_claim(c: Ctx) -> bool:
    row = c.conn.execute(
        "SELECT ended, job_id FROM queue_end_and_claim(%s, %s, 'error', 'boom', NULL, 'matrix')",
        [c.scene.running, c.scene.lease],
    ).fetchone()
    return row == ("pending", c.scene.pending)


def renew_leases(c: Ctx) -> bool:
    rows = c.conn.execute(
        "SELECT job_id, renewed FROM queue_renew_leases(%s::uuid[], %s::uuid[])",
        [[c.scene.running, c.scene.expired], [c.scene.lease, uuid.uuid4()]],
    ).fetchall()
    return rows == [(c.scene.running, True), (c.scene.expired, False)]


def set_output(c: Ctx) -> bool:
    return (
        c.one("SELECT queue_set_output(%s, %s, 'so far')", c.scene.running, c.scene.lease) is True
    )


def add_events(c: Ctx) -> bool:
    added = c.one(
        "SELECT queue_add_events(%s, %s, ARRAY['log'], ARRAY['{\"text\": \"hi\"}'::jsonb])",
        c.scene.running,
        c.scene.lease,
    )
    return added == 1


def retry_job(c: Ctx) -> bool:
    return c.one("SELECT queue_retry_job(%s)", c.scene.old_failed) is True


def select_attempts(c: Ctx) -> bool:
    return bool(c.conn.execute("SELECT * FROM coding_job_attempts").fetchall())


def select_events(c: Ctx) -> bool:
    return bool(c.conn.execute("SELECT * FROM coding_job_events").fetchall())


def cancelled_count(c: Ctx) -> bool:
    return c.one("SELECT cancelled_count FROM get_queue_stats()") == 0


# -- users' limits (0012) --------------------------------------------------------------------


def set_user_limit(c: Ctx) -> bool:
    got = c.one("SELECT queue_set_user_limit(%s, 2)", c.scene.user)
    row = c.owner.execute("SELECT max_concurrency FROM queue_user_limits").fetchone()
    return got == 2 and row == (2,)


def update_user_default(c: Ctx) -> bool:
    cur = c.conn.execute("UPDATE queue_config SET user_max_concurrency = 4")
    return cur.rowcount == 1


def list_users(c: Ctx) -> bool:
    return bool(c.conn.execute("SELECT * FROM queue_user_list()").fetchall())


def select_user_tables(c: Ctx) -> bool:
    c.conn.execute("SELECT * FROM queue_users").fetchall()
    c.conn.execute("SELECT * FROM queue_user_limits").fetchall()
    return True


def insert_user_limit(c: Ctx) -> bool:
    c.conn.execute(
        "INSERT INTO queue_user_limits (user_id, max_concurrency) VALUES (%s, 5)", [c.scene.user]
    )
    return True


PRODUCER, WORKER, MONITOR, OPERATOR = ROLES
NOBODY: frozenset[str] = frozenset()
EVERYONE = frozenset(ROLES)

# action -> the roles whose job includes it
MATRIX: dict[Action, frozenset[str]] = {
    insert_session: frozenset({PRODUCER, OPERATOR}),
    insert_job: frozenset({PRODUCER, OPERATOR}),
    insert_job_with_state: NOBODY,
    select_jobs: frozenset({PRODUCER, WORKER, OPERATOR}),
    select_sessions: frozenset({PRODUCER, WORKER, OPERATOR}),
    update_job: NOBODY,
    delete_job: NOBODY,
    update_session: NOBODY,
    claim: frozenset({WORKER, OPERATOR}),
    complete_with_lease: frozenset({WORKER, OPERATOR}),
    complete_with_null_lease: NOBODY,
    complete_without_lease: frozenset({OPERATOR}),
    fail_with_lease: frozenset({WORKER, OPERATOR}),
    fail_with_null_lease: NOBODY,
    fail_without_lease: frozenset({OPERATOR}),
    heartbeat: frozenset({WORKER, OPERATOR}),
    release: frozenset({WORKER, OPERATOR}),
    complete_and_claim: frozenset({WORKER, OPERATOR}),
    claims_of_worker: frozenset({WORKER, OPERATOR}),
    select_lease_tokens: NOBODY,
    end_attempt_knowing_ids: NOBODY,
    reap: frozenset({WORKER, OPERATOR}),
    reap_early: NOBODY,
    prune: frozenset({WORKER, OPERATOR}),
    purge: frozenset({OPERATOR}),
    requeue: frozenset({OPERATOR}),
    record_reaper_run: frozenset({WORKER, OPERATOR}),
    update_config: frozenset({OPERATOR}),
    switch_test_clock: NOBODY,
    move_clock: NOBODY,
    stats: frozenset({WORKER, MONITOR, OPERATOR}),
    next_run_at: frozenset({WORKER, MONITOR, OPERATOR}),
    due_jobs: frozenset({WORKER, MONITOR, OPERATOR}),
    settings: EVERYONE,
    select_reaper_runs: frozenset({WORKER, MONITOR, OPERATOR}),
    select_migrations: frozenset({OPERATOR}),
    select_config: frozenset({OPERATOR}),
    insert_session_with_concurrency: frozenset({PRODUCER, OPERATOR}),
    insert_job_with_key: frozenset({PRODUCER, OPERATOR}),
    insert_job_cancelled: NOBODY,
    insert_job_with_output: NOBODY,
    update_max_concurrency: frozenset({OPERATOR}),
    cancel_pending: frozenset({PRODUCER, OPERATOR}),
    cancel_running: frozenset({PRODUCER, OPERATOR}),
    cancel_session: frozenset({PRODUCER, OPERATOR}),
    end_attempt: frozenset({WORKER, OPERATOR}),
    end_attempt_with_null_lease: NOBODY,
    end_and_claim: frozenset({WORKER, OPERATOR}),
    renew_leases: frozenset({WORKER, OPERATOR}),
    add_events: frozenset({WORKER, OPERATOR}),
    set_output: frozenset({WORKER, OPERATOR}),
    retry_job: frozenset({OPERATOR}),
    select_attempts: frozenset({PRODUCER, WORKER, OPERATOR}),
    select_events: frozenset({PRODUCER, WORKER, OPERATOR}),
    cancelled_count: frozenset({WORKER, MONITOR, OPERATOR}),
    set_user_limit: frozenset({OPERATOR}),
    update_user_default: frozenset({OPERATOR}),
    list_users: frozenset({MONITOR, OPERATOR}),
    select_user_tables: NOBODY,
    insert_user_limit: NOBODY,
}


@pytest.fixture(scope="module")
def owner(new_database: Callable[..., str]) -> Iterator[psycopg.Connection[Any]]:
    """The owner's connection to a database of the module's own (test clock off)."""
    url = new_database("mobvibe_roles")
    with psycopg.connect(url, autocommit=True) as conn:
        migrate(conn)
        yield conn


@pytest.fixture(scope="module")
def connections(
    owner: psycopg.Connection[Any],
) -> Iterator[dict[tuple[str, str], psycopg.Connection[Any]]]:
    """(role, how) -> a connection acting as mobvibe_<role>: "member" logs in as a member,
    "set role" logs in as a NOINHERIT member and runs SET ROLE."""
    roles = LoginRoles(owner, owner.info.dsn)
    conns: dict[tuple[str, str], psycopg.Connection[Any]] = {}
    try:
        for role in ROLES:
            group = f"mobvibe_{role}"
            conns[role, "member"] = psycopg.connect(roles.make(group), autocommit=True)
            taking = psycopg.connect(roles.make(group, inherit=False), autocommit=True)
            taking.execute(f"SET ROLE {group}")
            conns[role, "set role"] = taking
        yield conns
    finally:
        for conn in conns.values():
            conn.close()
        roles.drop()


@pytest.fixture
def scene(owner: psycopg.Connection[Any]) -> Scene:
    return make_scene(owner)


def make_scene(owner: psycopg.Connection[Any]) -> Scene:
    owner.execute(
        "TRUNCATE coding_jobs, coding_job_attempts, coding_job_events, coding_sessions, "
        "queue_reaper_runs, queue_user_limits"
    )
    owner.execute(
        "UPDATE queue_config SET backoff_base = DEFAULT, backoff_cap = DEFAULT, "
        "backoff_jitter = DEFAULT, heartbeat_timeout = DEFAULT, retain_completed = DEFAULT, "
        "retain_failed = DEFAULT, test_clock = false, user_max_concurrency = DEFAULT"
    )
    ids = {name: uuid.uuid4() for name in Scene.__dataclass_fields__}
    owner.execute("INSERT INTO coding_sessions (id) VALUES (%s)", [ids["session"]])
    owner.execute(
        "INSERT INTO coding_sessions (id, user_id) VALUES (%s, %s)",
        [ids["user_session"], ids["user"]],
    )
    owner.execute("UPDATE queue_users SET ready = false, turn = 0, last_started_at = NULL")
    with triggers_off(owner):
        owner.execute(SCENE, ids)
        for statement in SCENE_ATTEMPT:
            owner.execute(statement, ids)
    return Scene(**ids)


def snapshot(owner: psycopg.Connection[Any]) -> tuple[str, ...]:
    row = owner.execute(SNAPSHOT).fetchone()
    assert row is not None
    return tuple(row)


@pytest.mark.parametrize("how", ["member", "set role"])
@pytest.mark.parametrize("role", ROLES)
@pytest.mark.parametrize("action", list(MATRIX), ids=[a.__name__ for a in MATRIX])
def test_a_role_may_do_exactly_what_its_job_includes(
    action: Action,
    role: str,
    how: str,
    scene: Scene,
    owner: psycopg.Connection[Any],
    connections: dict[tuple[str, str], psycopg.Connection[Any]],
) -> None:
    conn = connections[role, how]
    if how == "set role":
        assert scalar(conn, "SELECT current_user", ()) == f"mobvibe_{role}"
    check_role(action, role, how, Ctx(conn, owner, scene))


def check_role(action: Action, role: str, how: str, ctx: Ctx) -> None:
    """The action takes effect exactly when the role's job includes it."""
    before = snapshot(ctx.owner)
    try:
        took_effect = action(ctx)
    except psycopg.errors.InsufficientPrivilege:
        assert snapshot(ctx.owner) == before, "a refused call changed something"
        took_effect = False
    allowed = role in MATRIX[action]
    assert took_effect is allowed, (
        f"mobvibe_{role} ({how}) {'could not' if allowed else 'could'} {action.__name__}"
    )
    if not allowed:
        assert snapshot(ctx.owner) == before or action in (reap_early, move_clock, prune), (
            "a refused call changed something"
        )


def test_a_login_role_with_no_group_may_do_nothing(
    scene: Scene, owner: psycopg.Connection[Any]
) -> None:
    roles = LoginRoles(owner, owner.info.dsn)
    try:
        with psycopg.connect(roles.make(), autocommit=True) as stranger:
            before = snapshot(owner)
            for action in MATRIX:
                try:
                    assert action(Ctx(stranger, owner, scene)) is False, action.__name__
                except psycopg.errors.InsufficientPrivilege:
                    pass
            assert snapshot(owner) == before
    finally:
        roles.drop()


SUPABASE_ROLES = ("anon", "authenticated", "service_role")


@pytest.mark.skipif(
    bool(os.environ.get("TEST_DATABASE_URL")),
    reason="makes Supabase's cluster-wide roles: only on the private embedded server",
)
def test_supabase_service_role_becomes_an_operator_and_the_api_roles_keep_nothing(
    new_database: Callable[..., str],
) -> None:
    url = new_database("mobvibe_supabase")
    api_roles = sql.SQL(", ").join(map(sql.Identifier, SUPABASE_ROLES))
    with psycopg.connect(url, autocommit=True) as owner:
        for name in SUPABASE_ROLES:
            owner.execute(sql.SQL("CREATE ROLE {} LOGIN").format(sql.Identifier(name)))
        try:
            # Supabase's default privileges: everything in public to the API roles
            for kind in ("TABLES", "FUNCTIONS"):
                owner.execute(
                    sql.SQL(
                        "ALTER DEFAULT PRIVILEGES IN SCHEMA public GRANT ALL ON {} TO {}"
                    ).format(sql.SQL(kind), api_roles)
                )
            owner.execute("CREATE PUBLICATION supabase_realtime")
            migrate(owner)
            as_user = {name: conninfo.make_conninfo(url, user=name) for name in SUPABASE_ROLES}
            with psycopg.connect(as_user["service_role"], autocommit=True) as service:
                # the plan's edge functions: a plain INSERT, then the token-less calls
                session = scalar(
                    service,
                    "INSERT INTO coding_sessions (id) VALUES (gen_random_uuid()) RETURNING id",
                    (),
                )
                job = scalar(
                    service,
                    "INSERT INTO coding_jobs (session_id, prompt, priority) VALUES (%s, 'x', 1) "
                    "RETURNING id",
                    (session,),
                )
                assert scalar(service, "SELECT fail_job(%s, 'edge')", (job,)) is True
                assert scalar(service, "SELECT complete_job(%s)", (job,)) is True
                assert scalar(service, "SELECT completed_count FROM get_queue_stats()", ()) == 1
            for end_user in ("anon", "authenticated"):
                with psycopg.connect(as_user[end_user], autocommit=True) as conn:
                    for call in (
                        "SELECT * FROM claim_next_job()",
                        "SELECT complete_job(gen_random_uuid())",
                        "SELECT * FROM get_queue_stats()",
                        "SELECT * FROM queue_settings()",
                        "SELECT count(*) FROM coding_jobs",
                        "SELECT count(*) FROM queue_config",
                        "SELECT count(*) FROM queue_repeatables",
                        "SELECT count(*) FROM coding_job_attempts",
                        "SELECT count(*) FROM coding_job_events",
                        "SELECT cancel_job(gen_random_uuid())",
                        "SELECT queue_cancel_session(gen_random_uuid())",
                    ):
                        with pytest.raises(psycopg.errors.InsufficientPrivilege):
                            conn.execute(call)
        finally:
            owner.execute(sql.SQL("DROP OWNED BY {}").format(api_roles))
            owner.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = ANY(%s)",
                [list(SUPABASE_ROLES)],
            )
            owner.execute(sql.SQL("DROP ROLE {}").format(api_roles))


# -- the phone: Supabase's authenticated and anon, with and without a JWT -----------------------


@dataclass(frozen=True)
class PhoneScene:
    """User A's session with a pending and a running job (its attempt and an event), user B's
    session with a pending job, the backend's session (no user) with a pending job."""

    user: uuid.UUID  # A
    other_user: uuid.UUID  # B
    session: uuid.UUID
    pending: uuid.UUID
    running: uuid.UUID
    lease: uuid.UUID
    other_session: uuid.UUID
    other_pending: uuid.UUID
    backend_session: uuid.UUID
    backend_pending: uuid.UUID


PHONE_SCENE = """
INSERT INTO coding_sessions (id, user_id) VALUES
 (%(session)s, %(user)s), (%(other_session)s, %(other_user)s), (%(backend_session)s, NULL);
INSERT INTO coding_jobs (id, session_id, prompt, status, attempt, worker_id, lease_token,
                         heartbeat_at, started_at) VALUES
 (%(pending)s, %(session)s, 'mine', 'pending', 0, NULL, NULL, NULL, NULL),
 (%(running)s, %(session)s, 'mine, running', 'processing', 1, 'w1', %(lease)s, now(), now()),
 (%(other_pending)s, %(other_session)s, 'theirs', 'pending', 0, NULL, NULL, NULL, NULL),
 (%(backend_pending)s, %(backend_session)s, 'backend', 'pending', 0, NULL, NULL, NULL, NULL);
INSERT INTO coding_job_attempts (job_id, attempt, worker_id, started_at)
 VALUES (%(running)s, 1, 'w1', now());
INSERT INTO coding_job_events (job_id, session_id, attempt, kind, payload)
 VALUES (%(running)s, %(session)s, 1, 'progress', '{"pct": 10}');
"""


class Phone:
    """What a phone's action sees: its request's connection, the owner's, and the scene."""

    def __init__(
        self, conn: psycopg.Connection[Any], owner: psycopg.Connection[Any], s: PhoneScene
    ):
        self.conn, self.owner, self.scene = conn, owner, s

    def ids(self, statement: str, *params: Any) -> set[Any]:
        return {row[0] for row in self.conn.execute(statement.encode(), params).fetchall()}

    def status(self, job: uuid.UUID) -> Any:
        return scalar(self.owner, "SELECT status FROM coding_jobs WHERE id = %s", (job,))


PhoneAction = Callable[[Phone], bool]


def phone_reads_sessions(p: Phone) -> bool:
    return p.ids("SELECT id FROM coding_sessions") == {p.scene.session}


def phone_reads_jobs(p: Phone) -> bool:
    mine = {p.scene.pending, p.scene.running}
    return p.ids("SELECT id FROM coding_jobs") == mine


def phone_reads_a_job_by_id(p: Phone) -> bool:
    return p.ids("SELECT id FROM coding_jobs WHERE id = %s", p.scene.running) != set()


def phone_reads_attempts(p: Phone) -> bool:
    return p.ids("SELECT job_id FROM coding_job_attempts") == {p.scene.running}


def phone_reads_events(p: Phone) -> bool:
    return p.ids("SELECT job_id FROM coding_job_events") == {p.scene.running}


def phone_reads_the_backends_jobs(p: Phone) -> bool:
    """(Another user's rows are no one's but that user's: phone_reads_jobs.)"""
    theirs = {p.scene.backend_pending, p.scene.backend_session}
    seen = p.ids("SELECT id FROM coding_jobs") | p.ids("SELECT id FROM coding_sessions")
    return bool(seen & theirs)


def phone_reads_lease_tokens(p: Phone) -> bool:
    return bool(p.ids("SELECT lease_token FROM coding_jobs"))


def phone_reads_whole_rows(p: Phone) -> bool:
    return bool(p.ids("SELECT j FROM coding_jobs j"))


def phone_submits(p: Phone) -> bool:
    p.conn.execute(
        "INSERT INTO coding_jobs (session_id, prompt) VALUES (%s, 'from the phone')",
        [p.scene.session],
    )
    return True


def phone_submits_with_key(p: Phone) -> bool:
    made = p.ids(
        "INSERT INTO coding_jobs (session_id, prompt, idempotency_key) "
        "VALUES (%s, 'tap', 'k1') RETURNING id",
        p.scene.session,
    )
    return len(made) == 1


def phone_submits_with_priority(p: Phone) -> bool:
    p.conn.execute(
        "INSERT INTO coding_jobs (session_id, prompt, priority) VALUES (%s, 'me first', 100)",
        [p.scene.session],
    )
    return True


def phone_submits_with_retries(p: Phone) -> bool:
    p.conn.execute(
        "INSERT INTO coding_jobs (session_id, prompt, max_retries) VALUES (%s, 'again', 1000)",
        [p.scene.session],
    )
    return True


def phone_submits_with_a_run_at(p: Phone) -> bool:
    p.conn.execute(
        "INSERT INTO coding_jobs (session_id, prompt, run_at) VALUES (%s, 'later', now())",
        [p.scene.session],
    )
    return True


def phone_submits_into_the_backends_session(p: Phone) -> bool:
    """(Into another user's: phone_submits, by that other user.)"""
    p.conn.execute(
        "INSERT INTO coding_jobs (session_id, prompt) VALUES (%s, 'not mine')",
        [p.scene.backend_session],
    )
    return True


def phone_cancels_pending(p: Phone) -> bool:
    return scalar(p.conn, "SELECT cancel_job(%s)", (p.scene.pending,)) is True


def phone_cancels_running(p: Phone) -> bool:
    return scalar(p.conn, "SELECT cancel_job(%s)", (p.scene.running,)) is True


def phone_cancels_the_backends_job(p: Phone) -> bool:
    """(Another user's: phone_cancels_pending, by that other user.)"""
    scalar(p.conn, "SELECT cancel_job(%s)", (p.scene.backend_pending,))
    return p.status(p.scene.backend_pending) != "pending"


def phone_cancels_through_the_inner_function(p: Phone) -> bool:
    p.conn.execute(
        "SELECT queue_cancel_locked(%s, %s, 1, now())",
        [p.scene.other_pending, p.scene.other_session],
    )
    return p.status(p.scene.other_pending) != "pending"


def phone_cancels_a_session(p: Phone) -> bool:
    return bool(scalar(p.conn, "SELECT queue_cancel_session(%s)", (p.scene.session,)))


def phone_updates_a_job(p: Phone) -> bool:
    p.conn.execute("UPDATE coding_jobs SET priority = 100, status = 'completed'")
    return p.status(p.scene.pending) != "pending"


def phone_deletes_a_job(p: Phone) -> bool:
    p.conn.execute("DELETE FROM coding_jobs")
    return p.status(p.scene.pending) is None


def phone_makes_a_session(p: Phone) -> bool:
    p.conn.execute(
        "INSERT INTO coding_sessions (id, user_id) VALUES (%s, %s)", [uuid.uuid4(), p.scene.user]
    )
    return True


def phone_claims(p: Phone) -> bool:
    return p.conn.execute("SELECT * FROM claim_next_job('phone')").fetchone() is not None


def phone_ends_an_attempt(p: Phone) -> bool:
    scalar(
        p.conn, "SELECT queue_end_attempt(%s, %s, 'completed')", (p.scene.running, p.scene.lease)
    )
    return p.status(p.scene.running) != "processing"


def phone_reads_the_queue(p: Phone) -> bool:
    for statement in ("SELECT * FROM queue_config", "SELECT * FROM get_queue_stats()"):
        if p.conn.execute(statement).fetchall():
            return True
    return False


OWNER_JWT, OTHER_JWT, NO_JWT, BAD_SUB, ANON = "owner", "other user", "no jwt", "bad sub", "anon"
PHONE_CALLERS = (OWNER_JWT, OTHER_JWT, NO_JWT, BAD_SUB, ANON)
ONLY_THE_OWNER = frozenset({OWNER_JWT})

# action -> the callers that may take it
PHONE_MATRIX: dict[PhoneAction, frozenset[str]] = {
    phone_reads_sessions: ONLY_THE_OWNER,
    phone_reads_jobs: ONLY_THE_OWNER,
    phone_reads_a_job_by_id: ONLY_THE_OWNER,
    phone_reads_attempts: ONLY_THE_OWNER,
    phone_reads_events: ONLY_THE_OWNER,
    phone_reads_the_backends_jobs: frozenset(),
    phone_reads_lease_tokens: frozenset(),
    phone_reads_whole_rows: frozenset(),
    phone_submits: ONLY_THE_OWNER,
    phone_submits_with_key: ONLY_THE_OWNER,
    phone_submits_with_priority: frozenset(),
    phone_submits_with_retries: frozenset(),
    phone_submits_with_a_run_at: frozenset(),
    phone_submits_into_the_backends_session: frozenset(),
    phone_cancels_pending: ONLY_THE_OWNER,
    phone_cancels_running: ONLY_THE_OWNER,
    phone_cancels_the_backends_job: frozenset(),
    phone_cancels_through_the_inner_function: frozenset(),
    phone_cancels_a_session: frozenset(),
    phone_updates_a_job: frozenset(),
    phone_deletes_a_job: frozenset(),
    phone_makes_a_session: frozenset(),
    phone_claims: frozenset(),
    phone_ends_an_attempt: frozenset(),
    phone_reads_the_queue: frozenset(),
}


@pytest.fixture(scope="module")
def phone_owner(new_database: Callable[..., str]) -> Iterator[psycopg.Connection[Any]]:
    """The owner's connection to a database set up as Supabase's, migrated after."""
    if os.environ.get("TEST_DATABASE_URL"):
        pytest.skip("makes Supabase's cluster-wide roles: only on the private embedded server")
    url = new_database("mobvibe_phone")
    with psycopg.connect(url, autocommit=True) as conn:
        make_api_roles(conn)
        try:
            make_auth(conn)
            migrate(conn)
            yield conn
        finally:
            conn.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s "
                "AND pid <> pg_backend_pid()",
                [conn.info.dbname],
            )
            drop_api_roles(conn)


@pytest.fixture(scope="module")
def requests(phone_owner: psycopg.Connection[Any]) -> Iterator[psycopg.Connection[Any]]:
    """A connection as PostgREST's: a NOINHERIT login that takes anon or authenticated."""
    roles = LoginRoles(phone_owner, phone_owner.info.dsn)
    try:
        url = roles.make("anon", "authenticated", inherit=False, prefix="authenticator")
        with psycopg.connect(url, autocommit=True) as conn:
            yield conn
    finally:
        roles.drop()


@pytest.fixture
def phone_scene(phone_owner: psycopg.Connection[Any]) -> PhoneScene:
    phone_owner.execute(
        "TRUNCATE coding_jobs, coding_job_attempts, coding_job_events, coding_sessions"
    )
    ids = {name: uuid.uuid4() for name in PhoneScene.__dataclass_fields__}
    with triggers_off(phone_owner):
        for statement in PHONE_SCENE.strip().split(";\n"):
            phone_owner.execute(statement, ids)
    return PhoneScene(**ids)


def claims_of(caller: str, scene: PhoneScene) -> tuple[str, dict[str, Any] | None]:
    return {
        OWNER_JWT: ("authenticated", jwt(scene.user)),
        OTHER_JWT: ("authenticated", jwt(scene.other_user)),
        NO_JWT: ("authenticated", None),
        BAD_SUB: ("authenticated", jwt("not-a-uuid")),
        ANON: ("anon", jwt(scene.user)),
    }[caller]


@pytest.mark.parametrize("caller", PHONE_CALLERS)
@pytest.mark.parametrize("action", list(PHONE_MATRIX), ids=[a.__name__ for a in PHONE_MATRIX])
def test_the_phone_may_do_exactly_what_its_user_may(
    action: PhoneAction,
    caller: str,
    phone_scene: PhoneScene,
    phone_owner: psycopg.Connection[Any],
    requests: psycopg.Connection[Any],
) -> None:
    role, claims = claims_of(caller, phone_scene)
    act_as(requests, role, claims)
    before = snapshot(phone_owner)
    try:
        took_effect = action(Phone(requests, phone_owner, phone_scene))
    except psycopg.errors.InsufficientPrivilege:
        took_effect = False
    finally:
        requests.execute("RESET ROLE")
    allowed = caller in PHONE_MATRIX[action]
    assert took_effect is allowed, (
        f"the phone ({caller}) {'could not' if allowed else 'could'} {action.__name__}"
    )
    if not allowed:
        assert snapshot(phone_owner) == before, "a refused call changed something"


def test_the_phone_inserts_three_columns_and_reads_every_column_but_the_lease(
    phone_owner: psycopg.Connection[Any],
) -> None:
    def columns(privilege: str) -> set[str]:
        rows = phone_owner.execute(
            "SELECT attname FROM pg_attribute WHERE attrelid = 'coding_jobs'::regclass "
            "AND attnum > 0 AND NOT attisdropped "
            "AND has_column_privilege('authenticated', attrelid, attnum, %s)",
            [privilege],
        ).fetchall()
        return {name for (name,) in rows}

    assert columns("INSERT") == {"session_id", "prompt", "idempotency_key"}
    every = {
        name
        for (name,) in phone_owner.execute(
            "SELECT attname FROM pg_attribute WHERE attrelid = 'coding_jobs'::regclass "
            "AND attnum > 0 AND NOT attisdropped"
        ).fetchall()
    }
    assert columns("SELECT") == every - {"lease_token"}
    for privilege in ("UPDATE", "REFERENCES"):
        assert columns(privilege) == set()
    for role in (
        "anon",
        "mobvibe_producer",
        "mobvibe_worker",
        "mobvibe_monitor",
        "mobvibe_operator",
    ):
        assert not scalar(
            phone_owner,
            "SELECT has_column_privilege(%s, 'coding_jobs', 'lease_token', 'SELECT')",
            (role,),
        ), role


def test_a_sub_that_is_not_a_uuid_is_refused_with_a_clear_message(
    phone_scene: PhoneScene, requests: psycopg.Connection[Any]
) -> None:
    act_as(requests, "authenticated", jwt("12345"))
    try:
        with pytest.raises(psycopg.errors.InsufficientPrivilege, match="sub is not a user id"):
            requests.execute("SELECT id FROM coding_jobs")
        with pytest.raises(psycopg.errors.InsufficientPrivilege, match="sub is not a user id"):
            requests.execute("SELECT cancel_job(%s)", [phone_scene.pending])
    finally:
        requests.execute("RESET ROLE")


def test_the_backend_roles_keep_their_rights_under_row_security(
    phone_scene: PhoneScene, phone_owner: psycopg.Connection[Any]
) -> None:
    """Every table of the phone has row security, and the owner of the SECURITY DEFINER
    functions owns the tables (or has a policy of its own): the queue's functions see
    every row whoever calls them."""
    rows = phone_owner.execute(
        "SELECT c.relname, c.relrowsecurity, c.relowner = p.proowner "
        "FROM pg_class c, pg_proc p "
        "WHERE p.oid = 'public.claim_next_job(text, uuid)'::regprocedure "
        "AND c.oid = ANY (ARRAY['coding_sessions', 'coding_jobs', 'coding_job_events', "
        "'coding_job_attempts']::regclass[]) ORDER BY 1"
    ).fetchall()
    assert [(name, rls) for name, rls, _ in rows] == [
        ("coding_job_attempts", True),
        ("coding_job_events", True),
        ("coding_jobs", True),
        ("coding_sessions", True),
    ]
    roles = LoginRoles(phone_owner, phone_owner.info.dsn)
    try:
        for group in ROLES:
            with psycopg.connect(roles.make(f"mobvibe_{group}"), autocommit=True) as conn:
                if group in (PRODUCER, WORKER, OPERATOR):
                    count = scalar(conn, "SELECT count(*) FROM coding_jobs", ())
                    assert count == 4, f"mobvibe_{group} sees {count} of 4 jobs"
        with psycopg.connect(roles.make("mobvibe_worker"), autocommit=True) as worker:
            claimed = worker.execute("SELECT job_id FROM claim_next_job('w')").fetchall()
            assert len(claimed) == 1
    finally:
        roles.drop()


@pytest.mark.parametrize("role", ROLES)
def test_the_backend_roles_keep_exactly_their_rights_under_row_security(
    role: str, phone_owner: psycopg.Connection[Any]
) -> None:
    """The whole matrix again, where the phone's row security is on."""
    roles = LoginRoles(phone_owner, phone_owner.info.dsn)
    try:
        with psycopg.connect(roles.make(f"mobvibe_{role}"), autocommit=True) as conn:
            for action in MATRIX:
                ctx = Ctx(conn, phone_owner, make_scene(phone_owner))
                check_role(action, role, "member, row security on", ctx)
    finally:
        roles.drop()


def test_the_phones_rows_come_when_supabase_comes_after_the_migrations(
    new_database: Callable[..., str], phone_owner: psycopg.Connection[Any]
) -> None:
    """Migrated before auth.uid() existed, then migrate again: row security is applied."""
    url = new_database("mobvibe_phone_later")
    with psycopg.connect(url, autocommit=True) as conn:
        migrate(conn)
        assert (
            scalar(
                conn, "SELECT relrowsecurity FROM pg_class WHERE oid = 'coding_jobs'::regclass", ()
            )
            is False
        )
        assert migrate(conn).files == ()
        make_auth(conn)
        assert migrate(conn).files == ("row_security.sql",)
        assert (
            scalar(
                conn, "SELECT relrowsecurity FROM pg_class WHERE oid = 'coding_jobs'::regclass", ()
            )
            is True
        )
        assert migrate(conn).files == ()
        conn.execute("DROP SCHEMA auth CASCADE")
        assert migrate(conn).files == ("row_security.sql",)
        assert (
            scalar(
                conn, "SELECT relrowsecurity FROM pg_class WHERE oid = 'coding_jobs'::regclass", ()
            )
            is False
        )
        conn.execute("DROP OWNED BY anon, authenticated, service_role")
