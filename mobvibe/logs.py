"""Logging: one event per line, JSON by default (python-json-logger) or plain text."""

from __future__ import annotations

import logging
import os
import sys
from typing import Any

from pythonjsonlogger.json import JsonFormatter

LOG_FORMATS = ("json", "text")
LOG_LEVELS = ("debug", "info", "warning", "error")
_RESERVED = set(logging.LogRecord("", 0, "", 0, "", (), None).__dict__) | {"message", "asctime"}


class _TextFormatter(logging.Formatter):
    """`time level event message key=value ...` for people reading a terminal."""

    def format(self, record: logging.LogRecord) -> str:
        extra = " ".join(
            f"{k}={v}" for k, v in record.__dict__.items() if k not in _RESERVED and k != "event"
        )
        event = getattr(record, "event", "-")
        line = f"{self.formatTime(record)} {record.levelname:<7} {event:<22} {record.getMessage()}"
        return f"{line} {extra}".rstrip()


def setup(log_format: str = "json", level: str = "info") -> None:
    """Send the root logger to stderr in `log_format` at `level`."""
    handler = logging.StreamHandler(sys.stderr)
    if log_format == "json":
        handler.setFormatter(
            JsonFormatter(
                "%(asctime)s %(levelname)s %(name)s %(message)s",
                rename_fields={"levelname": "level", "asctime": "time"},
            )
        )
    else:
        handler.setFormatter(_TextFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())


def event(logger: logging.Logger, level: int, name: str, message: str, **fields: Any) -> None:
    """Log one event `name` with `fields`; cheap when the level is off."""
    if logger.isEnabledFor(level):
        fields.setdefault("pid", os.getpid())
        logger.log(level, message, extra={"event": name, **fields})
