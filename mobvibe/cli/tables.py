"""Plain-text tables and cells for the commands that show jobs to a person."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

NONE = "-"


def table(headers: Sequence[str], rows: Sequence[Sequence[str]], numeric: int = 0) -> str:
    """Columns padded to their widest cell, two spaces apart; the last one is not padded.

    `numeric`: a bit per column (1 << index) whose cells are aligned right.
    """
    widths = [max(len(str(row[i])) for row in [headers, *rows]) for i in range(len(headers))]

    def line(cells: Sequence[str]) -> str:
        padded = [
            cell.rjust(width) if numeric & (1 << i) else cell.ljust(width)
            for i, (cell, width) in enumerate(zip(cells, widths, strict=True))
        ]
        padded[-1] = padded[-1].rstrip() if not numeric & (1 << (len(cells) - 1)) else padded[-1]
        return "  ".join(padded).rstrip()

    return "\n".join(line(cells) for cells in [headers, *rows])


def when(value: datetime | None) -> str:
    """A time in the local zone, to the second; `-` for none."""
    return NONE if value is None else f"{value.astimezone():%Y-%m-%d %H:%M:%S}"


def one_line(text: str | None, width: int) -> str:
    """`text` on one line (whitespace runs become one space), cut to `width` with an ellipsis."""
    if not text:
        return NONE
    flat = " ".join(text.split())
    return flat if len(flat) <= width else flat[: width - 1] + "…"


def seconds(value: float | None) -> str:
    """A duration in seconds, one decimal; `-` for none."""
    return NONE if value is None else f"{value:.1f} s"
