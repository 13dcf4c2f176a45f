"""The front page's chart of the jobs ended per minute: its geometry, which the template
chart.svg draws (sizes are attributes: the page's policy allows no inline style)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC

from mobvibe.sql.store import MinuteCount
from mobvibe.web.data import ENDINGS

SLOT, BAR, TOP, HEIGHT = 48, 30, 18, 100  # pixels: a minute's width, its bar's, the margins
# Green, red and grey: completed, dead-lettered, cancelled (ENDINGS' order), bottom up.
COLOURS = tuple(zip(ENDINGS, ("#2da44e", "#cf222e", "#8c959f"), strict=True))


@dataclass(frozen=True)
class Bar:
    """One part of a minute's stacked bar: the jobs that ended one way."""

    y: int
    height: int
    colour: str
    title: str


@dataclass(frozen=True)
class Minute:
    """A minute's column: its stacked bar, its total above it, its time below."""

    x: int
    middle: int
    bars: list[Bar]
    total: int
    top: int
    label: str


@dataclass(frozen=True)
class Chart:
    """The whole chart: its size, its baseline, its minutes and its legend."""

    width: int
    base: int
    bar: int
    minutes: list[Minute]
    legend: list[tuple[str, str]]


def chart(minutes: Sequence[MinuteCount]) -> Chart:
    """The geometry of the chart of `minutes`, the highest total filling its height."""
    peak = max([1, *(m.completed + m.dead_lettered + m.cancelled for m in minutes)])
    legend = [(field.replace("_", "-"), colour) for field, colour in COLOURS]
    return Chart(
        width=SLOT * len(minutes),
        base=TOP + HEIGHT,
        bar=BAR,
        minutes=[_minute(i, m, peak) for i, m in enumerate(minutes)],
        legend=legend,
    )


def _minute(index: int, minute: MinuteCount, peak: int) -> Minute:
    label = f"{minute.minute.astimezone(UTC):%H:%M}"
    y, bars = TOP + HEIGHT, []
    for field, colour in COLOURS:
        count = int(getattr(minute, field))
        if count:
            height = round(HEIGHT * count / peak)
            y -= height
            bars.append(Bar(y, height, colour, f"{label} UTC: {count} {field.replace('_', '-')}"))
    return Minute(
        x=index * SLOT + (SLOT - BAR) // 2,
        middle=index * SLOT + SLOT // 2,
        bars=bars,
        total=minute.completed + minute.dead_lettered + minute.cancelled,
        top=y,
        label=label,
    )
