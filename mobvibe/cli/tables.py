"""Plain-text tables for the commands that show jobs to a person, from the columns the status
pages show too (mobvibe.columns)."""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from datetime import datetime
from typing import TypeVar

from mobvibe.columns import NONE, Column
from mobvibe.terminal import visible

R = TypeVar("R")


def table(columns: Sequence[Column[R]], rows: Sequence[R]) -> str:
    """The rows under the columns' headers, in capitals; times in the local zone; what the
    cells hold made visible (mobvibe.terminal)."""
    headers = [column.header.upper() for column in columns]
    cells = [[column.cell(row, when) for column in columns] for row in rows]
    return aligned(headers, cells, [column.numeric for column in columns])


def fields(columns: Sequence[Column[R]], row: R) -> str:
    """One record's fields, a line each, indented, their values aligned."""
    width = max(len(column.header) for column in columns) + 1
    return "\n".join(
        f"  {column.header + ':':<{width}} {visible(column.full(row, when))}" for column in columns
    )


def aligned(headers: Sequence[str], rows: Sequence[Sequence[str]], right: Sequence[bool]) -> str:
    """Columns padded to their widest cell, two spaces apart, those marked `right` aligned
    right; the last one is not padded. Every cell is made visible() first: a job's text
    must not drive the terminal."""
    rows = [[visible(cell) for cell in row] for row in rows]
    widths = [max(len(row[i]) for row in [headers, *rows]) for i in range(len(headers))]

    def line(cells: Sequence[str]) -> str:
        padded = [
            cell.rjust(width) if flush else cell.ljust(width)
            for cell, width, flush in zip(cells, widths, right, strict=True)
        ]
        return "  ".join(padded).rstrip()

    return "\n".join(line(cells) for cells in [headers, *rows])


def when(value: datetime | None) -> str:
    """A time in the local zone, to the second; `-` for none. A time at the end of what
    Python holds (the database's infinity, read as such) is shown as it is."""
    if value is None:
        return NONE
    with contextlib.suppress(OverflowError):
        value = value.astimezone()
    return f"{value:%Y-%m-%d %H:%M:%S}"
