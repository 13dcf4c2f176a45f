"""The PostgreSQL the benchmark runs on: BENCH_DATABASE_URL's server, else a throwaway one.

Each part gets a fresh, migrated database of its own, so that one part's rows
(a million of them for the claim cost) never slow another part down.
"""

from __future__ import annotations

import contextlib
import os
import platform
import secrets
import shutil
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
from psycopg import conninfo, sql

from bench.cpu import postmaster_of
from bench.queries import query
from mobvibe.sql.migrate import migrate

MAX_CONNECTIONS = 300  # the embedded server's: 64 busy pods of two connections, and more

# The settings that decide how fast a queue can commit and how many clients it takes.
SETTINGS = (
    "server_version",
    "fsync",
    "synchronous_commit",
    "wal_sync_method",
    "full_page_writes",
    "commit_delay",
    "wal_level",
    "wal_buffers",
    "shared_buffers",
    "work_mem",
    "max_connections",
    "max_wal_size",
    "checkpoint_timeout",
    "autovacuum",
    "random_page_cost",
    "jit",
)


class Server:
    """A PostgreSQL server the benchmark may create databases on."""

    def __init__(self, url: str, embedded: bool) -> None:
        self.url = url
        self.embedded = embedded
        self.created: list[str] = []

    def database(self, prefix: str) -> str:
        """A fresh database, migrated; its URL."""
        name = f"bench_{prefix}_{secrets.token_hex(3)}"
        with psycopg.connect(self.url, autocommit=True) as admin:
            admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        self.created.append(name)
        url = conninfo.make_conninfo(self.url, dbname=name)
        with psycopg.connect(url, autocommit=True) as conn:
            migrate(conn)
        return url

    def drop_all(self) -> None:
        with psycopg.connect(self.url, autocommit=True) as admin:
            for name in self.created:
                admin.execute(
                    sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
                )
        self.created.clear()

    def postmaster(self) -> int | None:
        """The server's postmaster pid when it runs on this machine (for CPU accounting)."""
        with psycopg.connect(self.url, autocommit=True) as conn:
            row = conn.execute(query("backend_pid")).fetchone()
            return None if row is None else postmaster_of(int(row[0]))  # while it lives

    def describe(self) -> dict[str, Any]:
        """The server's version and the settings that matter for a queue."""
        with psycopg.connect(self.url, autocommit=True) as conn:
            rows = conn.execute(query("server_settings"), {"names": list(SETTINGS)}).fetchall()
            version = conn.execute(query("server_version")).fetchone()
        settings = {name: _with_unit(value, unit) for name, value, unit in rows}
        return {
            "version": version[0] if version else None,
            "server": "embedded (pgserver, temporary data directory, default settings)"
            if self.embedded
            else "BENCH_DATABASE_URL",
            "settings": settings,
        }

    def pgbench(self) -> str:
        """The pgbench binary: pgserver's (PostgreSQL 16), else one on the machine."""
        try:
            from pgserver._commands import POSTGRES_BIN_PATH

            shipped = Path(POSTGRES_BIN_PATH) / "pgbench"
            if shipped.exists():
                return str(shipped)
        except ImportError:
            pass
        found = shutil.which("pgbench") or next(
            (
                str(p)
                for p in sorted(Path("/usr/lib/postgresql").glob("*/bin/pgbench"), reverse=True)
            ),
            None,
        )
        if found is None:
            raise SystemExit(
                "pgbench not found: pip install pgserver into the venv "
                "(make venv does) or install the postgresql-client package"
            )
        return found


def _with_unit(value: str, unit: str | None) -> str:
    """`shared_buffers` is reported as 16384 units of 8kB: show it as 128MB."""
    if unit == "8kB" and value.isdigit():
        return f"{int(value) * 8 // 1024}MB" if int(value) * 8 >= 1024 else f"{int(value) * 8}kB"
    if unit in ("kB", "MB", "s", "ms", "min") and value.lstrip("-").isdigit():
        return f"{value}{unit}"
    return value


@contextlib.contextmanager
def server() -> Iterator[Server]:
    """BENCH_DATABASE_URL's server, or an embedded PostgreSQL in a temporary directory."""
    given = os.environ.get("BENCH_DATABASE_URL")
    if given:
        found = Server(given, embedded=False)
        try:
            yield found
        finally:
            found.drop_all()
        return
    import pgserver

    directory = tempfile.mkdtemp(prefix="mobvibe-bench-pg-")
    embedded = pgserver.get_server(directory, cleanup_mode="delete")  # type: ignore[attr-defined]
    try:
        _allow_connections(embedded, MAX_CONNECTIONS)
        yield Server(str(embedded.get_uri()), embedded=True)
    finally:
        with contextlib.suppress(Exception):  # pgserver stops only the postmaster it started
            _pg_ctl(embedded, "stop")
        embedded.cleanup()
        shutil.rmtree(directory, ignore_errors=True)


def _allow_connections(embedded: Any, count: int) -> None:
    """Raise the embedded server's max_connections to `count` (the pods part runs a hundred
    and more supervisors at once), restarting it with the options it was started with."""
    with psycopg.connect(str(embedded.get_uri()), autocommit=True) as conn:
        conn.execute(sql.SQL("ALTER SYSTEM SET max_connections = {}").format(sql.Literal(count)))
    _pg_ctl(embedded, "restart")


def _pg_ctl(embedded: Any, action: str) -> None:
    from pgserver._commands import pg_ctl

    pg_ctl(["-w", "-m", "fast", action], pgdata=embedded.pgdata, user=embedded.system_user)


def machine() -> dict[str, Any]:
    """What the numbers were measured on."""
    model = ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    memory_mb = None
    with contextlib.suppress(OSError, ValueError, IndexError):
        memory_mb = int(Path("/proc/meminfo").read_text().split()[1]) // 1024
    return {
        "cpus": os.cpu_count(),
        "cpu_model": model,
        "memory_mb": memory_mb,
        "kernel": platform.release(),
        "python": sys.version.split()[0],
        "loadavg_start": os.getloadavg()[0],
    }
