"""Logging: one event per line, as text on a terminal and JSON (python-json-logger) elsewhere."""

from __future__ import annotations

import logging
import os
import sys
import time
from enum import StrEnum
from typing import Any

from pythonjsonlogger.json import JsonFormatter

from mobvibe.terminal import visible


class LogFormat(StrEnum):
    """How log lines are written."""

    AUTO = "auto"  # text on a terminal, JSON otherwise
    JSON = "json"  # one object per line (python-json-logger)
    TEXT = "text"  # `time level event message key=value ...`


LOG_LEVELS = ("debug", "info", "warning", "error")
_RESERVED = set(logging.LogRecord("", 0, "", 0, "", (), None).__dict__) | {"message", "asctime"}


def iso_time(created: float) -> str:
    """ISO 8601 in UTC with milliseconds: 2026-12-01T10:28:08.400Z."""
    seconds = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(created))
    return f"{seconds}.{int(created * 1000) % 1000:03d}Z"


class _JsonFormatter(JsonFormatter):
    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:  # noqa: N802 - logging's name
        return iso_time(record.created)


class _TextFormatter(logging.Formatter):
    """`time level event message key=value ...` for people reading a terminal."""

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:  # noqa: N802 - logging's name
        return iso_time(record.created)

    def format(self, record: logging.LogRecord) -> str:
        extra = " ".join(
            f"{k}={v}" for k, v in record.__dict__.items() if k not in _RESERVED and k != "event"
        )
        event = getattr(record, "event", "-")
        line = f"{self.formatTime(record)} {record.levelname:<7} {event:<22} {record.getMessage()}"
        return visible(f"{line} {extra}".rstrip())  # a job's error, its worker's id


def setup(log_format: str = LogFormat.AUTO, level: str = "info") -> None:
    """Send the root logger to stderr in `log_format` (a LogFormat) at `level`."""
    handler = logging.StreamHandler(sys.stderr)
    chosen = LogFormat(log_format)
    if chosen == LogFormat.AUTO:
        chosen = LogFormat.TEXT if sys.stderr.isatty() else LogFormat.JSON
    if chosen == LogFormat.JSON:
        handler.setFormatter(
            _JsonFormatter(
                "%(asctime)s %(levelname)s %(name)s %(message)s",
                rename_fields={"levelname": "level", "asctime": "time"},
            )
        )
    else:
        handler.setFormatter(_TextFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # psycopg warns as it ends a pipeline that a refused statement broke: the error
    # itself reaches the user, in one line, from the code that ran it.
    logging.getLogger("psycopg").setLevel(logging.ERROR)


def event(logger: logging.Logger, level: int, name: str, message: str, **fields: Any) -> None:
    """Log one event `name` with `fields`; cheap when the level is off."""
    if logger.isEnabledFor(level):
        fields.setdefault("pid", os.getpid())
        logger.log(level, message, extra={"event": name, **fields})
