"""Sizes on the command line: bytes, or a whole number with a binary unit (64KiB, 10MiB, 1GiB)."""

from __future__ import annotations

import re
from typing import Any

import click

_UNITS = {"": 1, "b": 1, "kib": 1024, "mib": 1024**2, "gib": 1024**3}
_SIZE = re.compile(r"^\s*(\d+)\s*(b|kib|mib|gib)?\s*$", re.IGNORECASE)


def parse_size(text: str) -> int:
    """Bytes in `text` ("65536", "64KiB", "10MiB"); ValueError if it is not a size."""
    match = _SIZE.match(text)
    if not match:
        raise ValueError(text)
    return int(match.group(1)) * _UNITS[(match.group(2) or "").lower()]


def format_size(size: int) -> str:
    """The shortest exact spelling of `size` in the largest unit: 10485760 -> "10MiB"."""
    for unit, factor in (("GiB", 1024**3), ("MiB", 1024**2), ("KiB", 1024)):
        if size and size % factor == 0:
            return f"{size // factor}{unit}"
    return f"{size}B"


class ByteSize(click.ParamType):  # type: ignore[type-arg]  # generic in newer click
    """A click type for sizes from `minimum` to `maximum` bytes."""

    name = "size"

    def __init__(self, minimum: int, maximum: int) -> None:
        self.minimum = minimum
        self.maximum = maximum

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> int:
        try:
            size = value if isinstance(value, int) else parse_size(str(value))
        except ValueError:
            self.fail(
                f"{value!r} is not a size: give bytes, or a whole number with a unit "
                "(64KiB, 10MiB, 1GiB)",
                param,
                ctx,
            )
        if not self.minimum <= size <= self.maximum:
            self.fail(
                f"{value!r} must be from {format_size(self.minimum)} to "
                f"{format_size(self.maximum)}",
                param,
                ctx,
            )
        return size

    def get_metavar(self, param: click.Parameter, ctx: click.Context | None = None) -> str:
        return "SIZE"
