"""Where the database is and how to reach it: DATABASE_URL, connections, embedded PostgreSQL."""

from __future__ import annotations

import functools
import json
import logging
import os
import re
import signal
import struct
import threading
import warnings
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import FrameType
from typing import Any

import psycopg
from psycopg import adapt, conninfo
from psycopg.abc import Loader as LoaderProtocol
from psycopg.pq import Format

from mobvibe.errors import ConfigError, DatabaseUnavailableError

_SCHEMES = ("postgresql://", "postgres://")
_SSLMODES = {"disable", "allow", "prefer", "require", "verify-ca", "verify-full"}
CONNECT_TIMEOUT_DEFAULT = 5
# A dead peer must be noticed well within the heartbeat timeout, not after
# the kernel's default of two hours.
_KEEPALIVES = {
    "keepalives": "1",
    "keepalives_idle": "10",
    "keepalives_interval": "5",
    "keepalives_count": "3",
}


def validate_url(url: str) -> str:
    """Return `url` if it is a usable PostgreSQL URL or conninfo; else raise ConfigError.

    The message names the problem and never repeats the URL, which may hold a password.
    """
    if not url.strip():
        raise ConfigError("DATABASE_URL is empty: set it to postgresql://user@host:5432/dbname")
    if "://" in url and not url.startswith(_SCHEMES):
        scheme = url.split("://", 1)[0]
        raise ConfigError(
            f"DATABASE_URL is not a PostgreSQL URL: unsupported scheme {scheme!r} "
            "(use postgresql://)"
        )
    if "://" not in url and "=" not in url:
        raise ConfigError(
            "DATABASE_URL is not a valid PostgreSQL URL: expected "
            "postgresql://user:password@host:5432/dbname (or key=value settings)"
        )
    try:
        params = conninfo.conninfo_to_dict(url)
    except psycopg.ProgrammingError as exc:
        raise ConfigError(
            f"DATABASE_URL is not a valid PostgreSQL URL: {first_line(exc, redact=True)}"
        ) from None
    port = str(params.get("port", "5432"))
    if not all(p.isdigit() and 0 < int(p) < 65536 for p in port.split(",")):
        # Not echoed: in postgresql://user:pa/ss@host the parser takes "pa" for the port.
        raise ConfigError(
            "DATABASE_URL is not a valid PostgreSQL URL: invalid port (a number from "
            "1 to 65535; percent-encode any / ? # @ in the password)"
        )
    sslmode = params.get("sslmode")
    if sslmode is not None and sslmode not in _SSLMODES:
        raise ConfigError(
            f"DATABASE_URL is not a valid PostgreSQL URL: invalid sslmode {sslmode!r}"
        )
    return url


def first_line(exc: BaseException, *, redact: bool = False) -> str:
    """The first line of an error's message (its type when it has none), for one-line reports."""
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    # A parse error quotes the offending fragment, which can be a password.
    return re.sub(r'"[^"]*"', '"..."', text) if redact else text


def connect(
    url: str,
    *,
    autocommit: bool = True,
    application_name: str = "mobvibe",
    pooled: bool = False,
    **kwargs: Any,
) -> psycopg.Connection[Any]:
    """Open one connection, autocommit by default; DatabaseUnavailableError if it cannot.

    `pooled`: `url` may be a transaction pooler (PgBouncer in transaction mode), which
    hands each transaction any server connection: no statement is prepared. Its times
    past what Python holds are read as the nearest it does (tolerate_extremes).
    """
    options = {
        "connect_timeout": CONNECT_TIMEOUT_DEFAULT,
        "application_name": application_name,
        **_keepalives_for(url),
        **pooler_safe(pooled),
        **kwargs,
    }
    try:
        conn = psycopg.connect(url, autocommit=autocommit, **options)
    except psycopg.OperationalError as exc:
        raise DatabaseUnavailableError(
            f"cannot connect to the database: {first_line(exc)}"
        ) from None
    tolerate_extremes(conn)
    return conn


# PostgreSQL holds times from 4713 BC to 294276 AD and 'infinity'; Python from year 1
# to 9999. A row holding one beyond must not stop every reader of the queue (the hub,
# the reaper, the statistics, the pages): such a time reads as the nearest Python holds.
TIME_MAX = datetime.max.replace(tzinfo=UTC)
TIME_MIN = datetime.min.replace(tzinfo=UTC)
_EXTREMES: dict[str, tuple[object, object]] = {
    "timestamptz": (TIME_MIN, TIME_MAX),
    "interval": (timedelta.min, timedelta.max),
}


def tolerate_extremes(conn: psycopg.Connection[Any]) -> None:
    """Read timestamptz and interval values beyond Python's range as TIME_MIN / TIME_MAX
    (timedelta.min / max) on `conn`, instead of raising DataError."""
    for type_name in _EXTREMES:
        for fmt in (Format.TEXT, Format.BINARY):
            conn.adapters.register_loader(type_name, _tolerant_loader(type_name, fmt))


@functools.cache
def _tolerant_loader(type_name: str, fmt: Format) -> type[adapt.Loader]:
    """A loader that asks psycopg's own and maps what it refuses to the nearest extreme."""
    oid = psycopg.adapters.types[type_name].oid
    found = psycopg.adapters.get_loader(oid, fmt)
    assert found is not None
    inner_class: type[LoaderProtocol] = found
    low, high = _EXTREMES[type_name]

    class Tolerant(adapt.Loader):
        format = fmt

        def __init__(self, oid: int, context: Any = None) -> None:
            super().__init__(oid, context)
            self._inner = inner_class(oid, context)

        def load(self, data: Any) -> Any:
            try:
                return self._inner.load(data)
            except psycopg.DataError:
                return low if _negative(type_name, fmt, bytes(data)) else high

    return Tolerant


def _negative(type_name: str, fmt: Format, data: bytes) -> bool:
    """Whether a value psycopg could not read lies before the range (else after it)."""
    if fmt == Format.BINARY:
        if type_name == "interval":  # microseconds, days, months: months weigh most
            micros, days, months = struct.unpack("!qii", data)
            return bool((months, days, micros) < (0, 0, 0))
        return bool(struct.unpack("!q", data)[0] < 0)
    text = data.strip()
    return text.startswith(b"-") or text.endswith((b" BC", b" ago"))


def pooler_safe(pooled: bool) -> dict[str, Any]:
    """The connection settings for a URL that may be a transaction pooler: prepare nothing
    (psycopg prepares a statement on its fifth use, on a server connection the pooler may
    not give back)."""
    return {"prepare_threshold": None} if pooled else {}


def _keepalives_for(url: str) -> dict[str, str]:
    return {} if socket_dir(url) else _KEEPALIVES  # Unix sockets have no keepalives


def socket_dir(url: str) -> str | None:
    """The directory of the Unix socket `url` connects through; None for TCP."""
    host = str(conninfo.conninfo_to_dict(url).get("host", ""))
    return host if host.startswith("/") else None


def resolve_url(url: str | None) -> str:
    """The database to use: `url` (validated), else an embedded PostgreSQL for local runs."""
    if url:
        return validate_url(url)
    return embedded_url()


def embedded_dir() -> Path:
    """Where the embedded PostgreSQL keeps its data (MOBVIBE_EMBEDDED_DIR overrides)."""
    configured = os.environ.get("MOBVIBE_EMBEDDED_DIR")
    if configured:
        return Path(configured)
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "mobvibe" / "pgdata"


def embedded_url() -> str:
    """Start (or reuse) the embedded PostgreSQL and return its URL."""
    # pgserver logs every pg_ctl command line at INFO, and platformdirs warns on
    # import when XDG_RUNTIME_DIR is unset: neither is news to the user.
    logging.getLogger("pgserver").setLevel(logging.WARNING)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            import pgserver  # noqa: PLC0415 - only local runs without DATABASE_URL need it
    except ImportError:
        raise ConfigError(
            "DATABASE_URL is not set and the embedded PostgreSQL is not installed: "
            "set DATABASE_URL, or pip install 'mobvibe-supervisor[embedded]'"
        ) from None
    directory = embedded_dir()
    directory.mkdir(parents=True, exist_ok=True)
    try:
        _forget_dead_handles(pgserver, directory)
        server = pgserver.get_server(directory, cleanup_mode="stop")  # type: ignore[attr-defined]
    except Exception as exc:  # noqa: BLE001 - pgserver raises plain exceptions
        raise DatabaseUnavailableError(
            f"cannot start the embedded PostgreSQL in {directory}: {first_line(exc)}"
        ) from None
    _exit_cleanly_on_signals()
    return str(server.get_uri())


def psql_command(url: str) -> list[str]:
    """psql on `url`: the one that comes with the embedded PostgreSQL where it is installed
    (its version), else the one on PATH."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            from pgserver import _commands  # noqa: PLC0415 - optional, as in embedded_url
        bundled = Path(_commands.POSTGRES_BIN_PATH) / "psql"
    except ImportError:
        bundled = None
    return [str(bundled) if bundled is not None and bundled.exists() else "psql", url]


# pgserver stops the server when the last process holding it exits, counting
# the holders' pids in this file (at exit, through atexit). A holder killed by a
# signal never takes its pid out, and then no later command stops the server.
_HANDLES = ".handle_pids.json"
_EXIT_SIGNALS = (signal.SIGTERM, signal.SIGHUP)


def _forget_dead_handles(pgserver: Any, directory: Path) -> None:
    """Take the pids of processes that are gone out of pgserver's list of holders."""
    handles = directory.resolve() / _HANDLES
    with pgserver.postgres_server.PostgresServer._lock:  # pgserver's own interprocess lock
        try:
            pids = json.loads(handles.read_text())
        except (OSError, ValueError):
            return
        alive = [pid for pid in pids if isinstance(pid, int) and _alive(pid)]
        if alive != pids:
            handles.write_text(json.dumps(alive))


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # another user's process
    return True


def _exit_cleanly_on_signals() -> None:
    """Let SIGTERM and SIGHUP end this process as Ctrl-C does, through the exit handlers
    that stop the embedded server; a process that handles them itself keeps its handlers."""
    if threading.current_thread() is not threading.main_thread():
        return
    for sig in _EXIT_SIGNALS:
        if signal.getsignal(sig) is signal.SIG_DFL:
            signal.signal(sig, _raise_exit)


def _raise_exit(signum: int, frame: FrameType | None) -> None:
    raise SystemExit(128 + signum)  # the shell's code for a process ended by that signal
