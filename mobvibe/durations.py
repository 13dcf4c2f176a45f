"""Durations on the command line: seconds, or a number with a unit (500ms, 30s, 5m, 2h, 7d)."""

from __future__ import annotations

import re
from typing import Any

import click

_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
_DURATION = re.compile(r"^\s*(\d+(?:\.\d*)?|\.\d+)\s*(ms|s|m|h|d)?\s*$", re.IGNORECASE)


def parse_duration(text: str) -> float:
    """Seconds in `text` ("30", "30s", "5m", "7d", "0"); ValueError if it is not a duration."""
    match = _DURATION.match(text)
    if not match:
        raise ValueError(text)
    return float(match.group(1)) * _UNITS[(match.group(2) or "s").lower()]


def format_duration(seconds: float) -> str:
    """The shortest exact spelling of `seconds` in the largest unit: 604800 -> "7d"."""
    for unit in ("d", "h", "m", "s"):
        value = seconds / _UNITS[unit]
        if seconds and value == int(value):
            return f"{int(value)}{unit}"
    return f"{seconds:g}s"


class Duration(click.ParamType):  # type: ignore[type-arg]  # generic in newer click
    """A click type for durations; `zero` says what 0 means ("off"), or None if 0 is refused.

    `minimum` and `maximum` bound every other value.
    """

    name = "duration"

    def __init__(
        self, zero: str | None = None, *, minimum: float = 0.0, maximum: float | None = None
    ) -> None:
        self.zero = zero
        self.minimum = minimum
        self.maximum = maximum

    def convert(
        self, value: Any, param: click.Parameter | None, ctx: click.Context | None
    ) -> float:
        if isinstance(value, int | float) and not isinstance(value, bool):
            seconds = float(value)
        else:
            try:
                seconds = parse_duration(str(value))
            except ValueError:
                self.fail(
                    f"{value!r} is not a duration: give seconds, or a number with a unit "
                    f"(500ms, 30s, 5m, 2h, 7d){self._zero_hint()}",
                    param,
                    ctx,
                )
        if seconds < 0 or (seconds == 0 and self.zero is None):
            self.fail(f"{value!r} must be greater than 0", param, ctx)
        if seconds and seconds < self.minimum:
            self.fail(
                f"{value!r} must be at least {format_duration(self.minimum)}{self._zero_hint()}",
                param,
                ctx,
            )
        if self.maximum is not None and not seconds <= self.maximum:  # not: NaN and inf too
            self.fail(f"{value!r} must be at most {format_duration(self.maximum)}", param, ctx)
        return seconds

    def _zero_hint(self) -> str:
        return f"; 0 means {self.zero}" if self.zero else ""

    def get_metavar(self, param: click.Parameter, ctx: click.Context | None = None) -> str:
        return "DURATION"
