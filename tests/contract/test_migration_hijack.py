"""No migration runs code that a role could have planted, on a new database or an upgrade.

The migrations run as the owner, often a superuser. A role that may create objects in
public plants shadows of every built-in the migrations' text calls: those of
test_hijack.py (overloads that match better than pg_catalog's, whatever the search_path
order), a public.format(text, text) that makes its author a superuser when a superuser
runs it (the unqualified format() of 0004), and a same-signature stand-in for every other
pg_catalog function the files name. The migrations 0001-0009 need public in their
search_path: `migrate` refuses to run them while such a role may plant there, or has
planted, saying how to close it. From 0010 on they run with search_path = pg_catalog,
pg_temp and nothing planted is looked up.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from typing import Any

import psycopg
import pytest
from psycopg import sql

from mobvibe.errors import MigrationError
from mobvibe.sql.files import migrations
from mobvibe.sql.migrate import migrate
from tests.contract.test_hijack import plant_shadows, shadow_calls
from tests.support.commands import assert_one_error_line, run_queue_cli
from tests.support.migrations import migrate_as_before
from tests.support.roles import LoginRoles

# A superuser that runs it makes its author one: 0004 called format() unqualified.
ESCALATING_FORMAT = """
CREATE OR REPLACE FUNCTION public.format(text, text) RETURNS text LANGUAGE plpgsql
SET search_path = pg_catalog AS $shadow$
BEGIN
    INSERT INTO public.shadow_calls (shadow, by_role) VALUES ('format(text, text)', current_user);
    BEGIN
        EXECUTE 'ALTER ROLE ' || quote_ident({attacker}) || ' SUPERUSER';
    EXCEPTION WHEN insufficient_privilege THEN
        NULL;
    END;
    RETURN pg_catalog.format($1, $2);
END $shadow$
"""

# Aggregates the migrations call that test_hijack.py does not shadow: (name, argument,
# state type, transition over (state, value), initial state).
MORE_AGGREGATES = [
    ("bool_or", "boolean", "boolean", "$1 OR $2", "false"),
    ("sum", "integer", "bigint", "$1 OPERATOR(pg_catalog.+) $2", "0"),
    ("sum", "bigint", "numeric", "$1 OPERATOR(pg_catalog.+) $2", "0"),
    ("array_agg", "name", "name[]", "pg_catalog.array_append($1, $2)", "{}"),
]

# Pseudo-types a SQL function can take and return (the others: internal, cstring, any...).
USABLE_PSEUDO = ("void", "anyelement", "anyarray", "anynonarray", "anycompatible")

CALLED_BUILTINS = """
SELECT p.proname, pg_get_function_identity_arguments(p.oid), pg_get_function_result(p.oid),
       p.pronargs
FROM pg_proc p
WHERE p.pronamespace = 'pg_catalog'::regnamespace AND p.proname = ANY(%s)
  AND p.prokind = 'f' AND p.provariadic = 0 AND p.proallargtypes IS NULL
  AND NOT EXISTS (SELECT 1 FROM pg_type t
                  WHERE t.oid = ANY (p.proargtypes::oid[] || p.prorettype)
                    AND t.typtype = 'p' AND t.typname <> ALL (%s))
ORDER BY 1, 2
"""


def names_called_by_the_migrations() -> list[str]:
    """Every name the migration files write as a call: `name(`."""
    found = {
        name.lower() for m in migrations() for name in re.findall(r"\b([A-Za-z_]\w*)\s*\(", m.sql)
    }
    return sorted(found)


def plant_stand_ins(attacker: psycopg.Connection[Any]) -> int:
    """public.f(same arguments) for every pg_catalog function the migrations name, each
    recording its call: live for a search_path that puts public before pg_catalog."""
    planted = 0
    rows = attacker.execute(
        CALLED_BUILTINS, [names_called_by_the_migrations(), list(USABLE_PSEUDO)]
    ).fetchall()
    for name, args, result, count in rows:
        record = sql.SQL(
            "INSERT INTO public.shadow_calls (shadow, by_role) VALUES ({}, current_user);"
        ).format(sql.Literal(f"{name}({args})"))
        call = f"pg_catalog.{sql.Identifier(name).as_string()}"
        call += "(" + ", ".join(f"${i}" for i in range(1, count + 1)) + ")"
        body = f"{record.as_string()} SELECT {call}"
        try:
            attacker.execute(
                f'CREATE FUNCTION public."{name}"({args}) RETURNS {result} LANGUAGE sql '
                f"AS $stand_in$ {body} $stand_in$"
            )
            planted += 1
        except psycopg.Error:
            pass  # already shadowed by plant_shadows, or a signature SQL cannot stand in for
    for i, (name, arg, state, step, initial) in enumerate(MORE_AGGREGATES):
        record = sql.SQL(
            "INSERT INTO public.shadow_calls (shadow, by_role) VALUES ({}, current_user);"
        ).format(sql.Literal(f"{name}({arg})"))
        attacker.execute(
            f"CREATE FUNCTION public.stand_in_step_{i}({state}, {arg}) RETURNS {state} "
            f"LANGUAGE sql AS $stand_in$ {record.as_string()} SELECT {step} $stand_in$"
        )
        attacker.execute(
            f"CREATE AGGREGATE public.{name}({arg}) (SFUNC = public.stand_in_step_{i}, "
            f"STYPE = {state}, INITCOND = '{initial}')"
        )
        planted += 1
    return planted


@pytest.fixture
def open_public(
    new_database: Callable[..., str],
) -> Iterator[Callable[[int | None], tuple[psycopg.Connection[Any], str, str]]]:
    """open(last) -> (owner, attacker's name, url): a database migrated up to `last` as the
    release that shipped it did (None: not at all), whose public an attacker may create in,
    and has planted in."""
    opened: list[tuple[LoginRoles, psycopg.Connection[Any]]] = []

    def open_(last: int | None) -> tuple[psycopg.Connection[Any], str, str]:
        url = new_database("mobvibe_plant")
        owner = psycopg.connect(url, autocommit=True)
        roles = LoginRoles(owner, url)
        opened.append((roles, owner))
        if last is not None:
            migrate_as_before(owner, last)  # as a release that shipped up to `last` did
        attacker_url = roles.make(prefix="mobvibe_attacker")
        name = str(psycopg.conninfo.conninfo_to_dict(attacker_url)["user"])
        owner.execute(sql.SQL("GRANT CREATE ON SCHEMA public TO {}").format(sql.Identifier(name)))
        with psycopg.connect(attacker_url, autocommit=True) as attacker:
            assert plant_shadows(attacker) > 40
            attacker.execute(ESCALATING_FORMAT.format(attacker=sql.Literal(name).as_string()))
            assert plant_stand_ins(attacker) > 20
            attacker.execute("SELECT format('is %s', 'live'::text)")  # the shadow wins
            assert shadow_calls(attacker) == [("format(text, text)", name)]
            attacker.execute("DELETE FROM public.shadow_calls")
        return owner, name, url

    yield open_
    for roles, owner in opened:
        roles.drop()
        owner.close()


def ran_as(owner: psycopg.Connection[Any], attacker: str) -> list[tuple[str, str]]:
    """The shadows that ran as anyone but their author."""
    return [(s, by) for s, by in shadow_calls(owner) if by != attacker]


def is_superuser(conn: psycopg.Connection[Any], role: str) -> bool:
    row = conn.execute("SELECT rolsuper FROM pg_roles WHERE rolname = %s", [role]).fetchone()
    return bool(row and row[0])


def applied(conn: psycopg.Connection[Any]) -> list[int]:
    return [v for (v,) in conn.execute("SELECT version FROM queue_migrations ORDER BY 1")]


def test_a_new_database_whose_public_is_open_is_refused_and_nothing_planted_runs(
    open_public: Callable[[int | None], tuple[psycopg.Connection[Any], str, str]],
) -> None:
    owner, attacker, url = open_public(None)
    with pytest.raises(MigrationError, match=f"REVOKE CREATE ON SCHEMA public FROM {attacker}"):
        migrate(owner)
    line = assert_one_error_line(run_queue_cli("migrate", database_url=url), 1)
    assert f"REVOKE CREATE ON SCHEMA public FROM {attacker}" in line
    assert ran_as(owner, attacker) == []
    assert not is_superuser(owner, attacker)
    assert applied(owner) == []
    assert owner.execute("SELECT to_regclass('coding_jobs')").fetchone() == (None,)

    # Closed again: what was planted while it was open is still there, and refused.
    owner.execute(
        sql.SQL("REVOKE CREATE ON SCHEMA public FROM {}").format(sql.Identifier(attacker))
    )
    with pytest.raises(MigrationError, match=f"of role {attacker}.*drop them"):
        migrate(owner)
    assert ran_as(owner, attacker) == [] and applied(owner) == []

    owner.execute(sql.SQL("DROP OWNED BY {}").format(sql.Identifier(attacker)))
    assert len(migrate(owner).applied) == len(migrations())
    assert not is_superuser(owner, attacker)


def test_a_public_open_to_every_role_is_refused_with_the_revoke_that_closes_it(
    new_database: Callable[..., str],
) -> None:
    with psycopg.connect(new_database("mobvibe_plant"), autocommit=True) as owner:
        owner.execute("GRANT CREATE ON SCHEMA public TO PUBLIC")  # PostgreSQL 14's default
        with pytest.raises(MigrationError, match="REVOKE CREATE ON SCHEMA public FROM PUBLIC"):
            migrate(owner)
        owner.execute("REVOKE CREATE ON SCHEMA public FROM PUBLIC")
        assert len(migrate(owner).applied) == len(migrations())


def test_an_upgrade_through_the_unqualified_migrations_is_refused_while_public_is_open(
    open_public: Callable[[int | None], tuple[psycopg.Connection[Any], str, str]],
) -> None:
    owner, attacker, _ = open_public(5)
    with pytest.raises(MigrationError, match=f"REVOKE CREATE ON SCHEMA public FROM {attacker}"):
        migrate(owner)
    assert ran_as(owner, attacker) == []
    assert not is_superuser(owner, attacker)
    assert applied(owner) == [1, 2, 3, 4, 5]


def test_an_upgrade_from_0009_runs_pinned_and_nothing_planted_runs(
    open_public: Callable[[int | None], tuple[psycopg.Connection[Any], str, str]],
) -> None:
    owner, attacker, _ = open_public(9)
    report = migrate(owner)
    assert list(report.applied) == [
        f"{m.version:04d}_{m.name}" for m in migrations() if m.version > 9
    ]
    assert ran_as(owner, attacker) == []
    assert not is_superuser(owner, attacker)
