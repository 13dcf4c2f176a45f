"""A private PostgreSQL 15 cluster of the machine's binaries, for a test that needs server
settings of its own (wal_level = logical): started on a free port, removed after."""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

from psycopg import conninfo

BIN = Path("/usr/lib/postgresql/15/bin")
LIB = Path("/usr/lib/postgresql/15/lib")


def available() -> bool:
    return (BIN / "initdb").exists() and (BIN / "pg_ctl").exists()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _as_owner(command: list[str], user: str | None) -> list[str]:
    """initdb and postgres refuse root: run them as `user` then."""
    return command if user is None else ["runuser", "-u", user, "--", *command]


@contextlib.contextmanager
def private_cluster(**settings: str) -> Iterator[str]:
    """A new cluster with `settings` in postgresql.conf; the URL of its database postgres
    (superuser postgres, trust on 127.0.0.1)."""
    user = "postgres" if os.geteuid() == 0 else None
    root = Path(tempfile.mkdtemp(prefix="mobvibe-pg15-"))
    data = root / "data"
    if user is not None:
        shutil.chown(root, user)
    port = _free_port()
    try:
        subprocess.run(
            _as_owner(
                [str(BIN / "initdb"), "-D", str(data), "-U", "postgres", "-A", "trust"], user
            ),
            check=True,
            capture_output=True,
            timeout=120,
        )
        lines = [f"{name} = '{value}'" for name, value in settings.items()]
        lines += [
            f"port = {port}",
            "listen_addresses = '127.0.0.1'",
            f"unix_socket_directories = '{root}'",
        ]
        with (data / "postgresql.conf").open("a") as conf:
            conf.write("\n".join(lines) + "\n")
        subprocess.run(
            _as_owner(
                [str(BIN / "pg_ctl"), "-D", str(data), "-w", "-l", str(root / "log"), "start"], user
            ),
            check=True,
            capture_output=True,
            timeout=120,
        )
        try:
            yield conninfo.make_conninfo(
                host="127.0.0.1", port=port, user="postgres", dbname="postgres"
            )
        finally:
            subprocess.run(
                _as_owner(
                    [str(BIN / "pg_ctl"), "-D", str(data), "-m", "immediate", "-w", "stop"], user
                ),
                check=False,
                capture_output=True,
                timeout=120,
            )
    finally:
        shutil.rmtree(root, ignore_errors=True)
