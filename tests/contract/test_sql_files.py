"""The current SQL in one place: sql/functions holds the live body of every function, one
file per function, and a database migrated by 0001-0009 upgrades to the catalog of a fresh one.
"""

from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import psycopg
import pytest

from mobvibe.sql.files import migrations, repeatables
from mobvibe.sql.migrate import MigrationReport, migrate, schema_is_current
from tests.support.migrations import FROZEN, migrate_as_before
from tests.support.rows import claim, insert_job, new_session

# What a database's schema is, for comparing two: every function of the queue's schema
# (definition, owner, settings, privileges), trigger, relation, column, index, constraint.
CATALOG = {
    "functions": """
        SELECT p.oid::regprocedure::text, pg_get_functiondef(p.oid), p.proowner::regrole::text,
               p.proconfig, p.provolatile, p.prosecdef, p.proparallel, p.proisstrict,
               array(SELECT a::text FROM unnest(coalesce(p.proacl, acldefault('f', p.proowner))) a
                     ORDER BY 1)
        FROM pg_proc p WHERE p.pronamespace = 'public'::regnamespace ORDER BY 1""",
    "triggers": """
        SELECT t.tgrelid::regclass::text, t.tgname, pg_get_triggerdef(t.oid), t.tgenabled
        FROM pg_trigger t JOIN pg_class c ON c.oid = t.tgrelid
        WHERE c.relnamespace = 'public'::regnamespace AND NOT t.tgisinternal ORDER BY 1, 2""",
    "relations": """
        SELECT c.oid::regclass::text, c.relkind, c.relowner::regrole::text, c.reloptions,
               array(SELECT a::text FROM unnest(coalesce(c.relacl, acldefault('r', c.relowner))) a
                     ORDER BY 1)
        FROM pg_class c WHERE c.relnamespace = 'public'::regnamespace ORDER BY 1""",
    "columns": """
        SELECT a.attrelid::regclass::text, a.attname, format_type(a.atttypid, a.atttypmod),
               a.attnotnull, pg_get_expr(d.adbin, d.adrelid), a.attidentity,
               array(SELECT x::text FROM unnest(a.attacl) x ORDER BY 1)
        FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid
        LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum
        WHERE c.relnamespace = 'public'::regnamespace AND c.relkind = 'r' AND a.attnum > 0
          AND NOT a.attisdropped
        ORDER BY 1, 2""",
    "indexes": """
        SELECT i.indexrelid::regclass::text, pg_get_indexdef(i.indexrelid)
        FROM pg_index i JOIN pg_class c ON c.oid = i.indrelid
        WHERE c.relnamespace = 'public'::regnamespace ORDER BY 1""",
    "constraints": """
        SELECT conrelid::regclass::text, conname, pg_get_constraintdef(oid) FROM pg_constraint
        WHERE connamespace = 'public'::regnamespace ORDER BY 1, 2""",
}

CREATE_FUNCTION = re.compile(r"^CREATE (?:OR REPLACE )?FUNCTION (?:public\.)?(\w+)\(", re.MULTILINE)
CREATE_TRIGGER = re.compile(r"^CREATE (?:OR REPLACE )?TRIGGER (\w+)", re.MULTILINE)
FUNCTION_PRIVILEGE = re.compile(r"^\s*(?:GRANT|REVOKE)\b[^;]*\bON FUNCTION\b", re.MULTILINE)
BODY = re.compile(r"AS \$\$(.*?)\$\$;", re.DOTALL)

FUNCTION_FILES = {
    r.name.removeprefix("functions/").removesuffix(".sql"): r.sql
    for r in repeatables()
    if r.name.startswith("functions/")
}


def catalog(url: str) -> dict[str, list[tuple[Any, ...]]]:
    with psycopg.connect(url, autocommit=True) as conn:
        return {name: conn.execute(q).fetchall() for name, q in CATALOG.items()}


def live_bodies(url: str) -> dict[str, list[str]]:
    """function name -> the bodies of its overloads, as the database runs them."""
    bodies: dict[str, list[str]] = defaultdict(list)
    with psycopg.connect(url, autocommit=True) as conn:
        for name, body in conn.execute(
            "SELECT proname, prosrc FROM pg_proc WHERE pronamespace = 'public'::regnamespace"
        ):
            bodies[name].append(body)
    return {name: sorted(found) for name, found in bodies.items()}


@pytest.fixture(scope="module")
def fresh_url(new_database: Callable[[], str]) -> str:
    """A database migrated from scratch by the runner."""
    url = new_database()
    with psycopg.connect(url, autocommit=True) as conn:
        migrate(conn)
    return url


@dataclass(frozen=True)
class Upgraded:
    """A database with jobs, migrated by 0001-0009 as before the function files, then by
    the runner of today: its URL, its jobs, what the runner reported."""

    url: str
    jobs: list[Any]
    report: MigrationReport


@pytest.fixture(scope="module")
def upgraded(new_database: Callable[[], str]) -> Upgraded:
    url = new_database()
    with psycopg.connect(url, autocommit=True) as conn:
        migrate_as_before(conn)
        assert not schema_is_current(conn)  # its functions were never applied from the files
        session = new_session(conn)
        jobs = [insert_job(conn, session, prompt=f"before {n}") for n in range(2)]
        report = migrate(conn)
        assert schema_is_current(conn)
    return Upgraded(url, jobs, report)


def test_every_function_of_the_queue_has_one_file_named_after_it(fresh_url: str) -> None:
    in_database = set(live_bodies(fresh_url))
    assert in_database == set(FUNCTION_FILES), (
        "a function of the queue without its file sql/functions/<name>.sql, or a file whose "
        "function does not exist"
    )
    for name, text in FUNCTION_FILES.items():
        assert set(CREATE_FUNCTION.findall(text)) == {name}, f"{name}.sql defines other functions"


def test_every_trigger_is_in_the_file_of_its_function(fresh_url: str) -> None:
    with psycopg.connect(fresh_url, autocommit=True) as conn:
        triggers = conn.execute(
            "SELECT t.tgname, t.tgfoid::regproc::text FROM pg_trigger t "
            "JOIN pg_class c ON c.oid = t.tgrelid "
            "WHERE c.relnamespace = 'public'::regnamespace AND NOT t.tgisinternal"
        ).fetchall()
    assert len(triggers) >= 5
    assert {(name, function) for name, function in triggers} == {
        (trigger, function)
        for function, text in FUNCTION_FILES.items()
        for trigger in CREATE_TRIGGER.findall(text)
    }


@pytest.mark.parametrize("database", ["fresh", "upgraded"])
def test_the_live_body_of_every_function_is_the_one_in_its_file(
    database: str, fresh_url: str, upgraded: Upgraded
) -> None:
    live = live_bodies(fresh_url if database == "fresh" else upgraded.url)
    for name, text in FUNCTION_FILES.items():
        assert live[name] == sorted(BODY.findall(text)), f"the body of {name} is not its file's"


def test_a_database_of_0001_to_0009_upgrades_to_the_catalog_of_a_fresh_one(
    fresh_url: str, upgraded: Upgraded
) -> None:
    later = tuple(f"{m.version:04d}_{m.name}" for m in migrations()[FROZEN:])
    assert (upgraded.report.applied, upgraded.report.already) == (later, FROZEN)
    # every file: the database had none on record
    assert upgraded.report.files == tuple(r.name for r in repeatables())
    before, after = catalog(fresh_url), catalog(upgraded.url)
    for part in CATALOG:
        assert after[part] == before[part], f"the {part} differ"
    # the jobs queued before the upgrade run after it, in their order
    with psycopg.connect(upgraded.url, autocommit=True) as conn:
        first = claim(conn)
        assert first is not None and first["job_id"] == upgraded.jobs[0]


def test_no_numbered_migration_after_0009_defines_a_function_or_its_privileges() -> None:
    for migration in migrations():
        if migration.version <= FROZEN:
            continue
        where = f"{migration.version:04d}_{migration.name}"
        assert not CREATE_FUNCTION.search(migration.sql), (
            f"{where} creates a function: put it in sql/functions/<name>.sql"
        )
        assert not CREATE_TRIGGER.search(migration.sql), (
            f"{where} creates a trigger: put it in the file of its function"
        )
        assert not FUNCTION_PRIVILEGE.search(migration.sql), (
            f"{where} grants or revokes a function: put it in sql/privileges.sql"
        )
