"""The one table a benchmark run prints: a measure, its value and unit, and its ratio to a baseline.

Ratios are the figures to compare between runs: this machine is shared and noisy, so absolute
rates move with whatever else runs, while a rate divided by a baseline measured in the same run
moves much less.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class Row:
    """One line of the table. ``ratio`` is None where no baseline applies (counts, wall time)."""

    measure: str
    value: float
    unit: str = ""
    ratio: float | None = None
    decimals: int = 1


def render(title: str, rows: Sequence[Row], *, ratio_label: str) -> str:
    """A plain-text table: measures left-aligned, numbers right-aligned with separators."""
    values = [f"{row.value:,.{row.decimals}f}" for row in rows]
    ratios = ["" if row.ratio is None else f"{row.ratio:.2f}" for row in rows]
    w_measure = max(len("measure"), *(len(row.measure) for row in rows))
    w_value = max(len("value"), *(len(v) for v in values))
    w_unit = max(len("unit"), *(len(row.unit) for row in rows))
    w_ratio = max(len(ratio_label), *(len(r) for r in ratios))
    header = (
        f"{'measure':<{w_measure}}  {'value':>{w_value}}  {'unit':<{w_unit}}  "
        f"{ratio_label:>{w_ratio}}"
    )
    lines = [title, header, "-" * len(header)]
    for row, value, ratio in zip(rows, values, ratios, strict=True):
        line = f"{row.measure:<{w_measure}}  {value:>{w_value}}  {row.unit:<{w_unit}}  "
        lines.append((line + f"{ratio:>{w_ratio}}").rstrip())
    return "\n".join(lines)
