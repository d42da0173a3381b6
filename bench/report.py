"""The one table a benchmark run prints: each figure, its ratio to a baseline, target and verdict.

Ratios are the figures to compare between runs: this machine is shared and noisy, so absolute
rates move with whatever else runs, while a rate divided by a baseline measured in the same run
moves much less. A target applies to the ratio when it starts with ``ratio``, else to the value.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class Row:
    """One line of the table.

    ``ratio`` is ``value`` divided by the baseline named in ``base`` (None where no baseline
    applies: counts, sizes); ``target`` is shown as written and ``ok`` is its verdict (None when
    the row has no target).
    """

    measure: str
    value: float
    unit: str = ""
    ratio: float | None = None
    base: str = ""
    target: str = ""
    ok: bool | None = None
    decimals: int = 1


def verdict(ok: bool | None) -> str:
    return "" if ok is None else ("PASS" if ok else "MISS")


def render(title: str, rows: Sequence[Row]) -> str:
    """A plain-text table: measures left-aligned, numbers right-aligned with separators."""
    header = ("measure", "value", "unit", "ratio", "to baseline", "target", "verdict")
    cells = [
        (
            row.measure,
            f"{row.value:,.{row.decimals}f}",
            row.unit,
            "" if row.ratio is None else f"{row.ratio:.2f}",
            row.base,
            row.target,
            verdict(row.ok),
        )
        for row in rows
    ]
    widths = [max(len(h), *(len(c[i]) for c in cells)) for i, h in enumerate(header)]
    right = {1, 3}  # numbers

    def line(values: Sequence[str]) -> str:
        parts = [
            f"{v:>{w}}" if i in right else f"{v:<{w}}"
            for i, (v, w) in enumerate(zip(values, widths, strict=True))
        ]
        return "  ".join(parts).rstrip()

    head = line(header)
    return "\n".join([title, head, "-" * len(head), *(line(c) for c in cells)])
