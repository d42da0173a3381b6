"""Plain-text rendering for people: aligned columns and ``name  value`` blocks. Pure.

Cells are made safe for a terminal: response excerpts and error messages come from other people's
servers, so control characters (escape sequences included) are replaced and newlines flattened.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Sequence
from datetime import UTC, datetime

MAX_CELL = 60
ELLIPSIS = "…"


def clean(text: str) -> str:
    """One line of printable text: whitespace runs become one space, other controls U+FFFD."""
    out: list[str] = []
    for ch in text:
        if ch in "\t\r\n\v\f":
            if out and out[-1] != " ":
                out.append(" ")
        elif unicodedata.category(ch) in ("Cc", "Cf", "Cs", "Co", "Zl", "Zp"):
            out.append("\ufffd")
        else:
            out.append(ch)
    return "".join(out).strip()


def cut(text: str, width: int = MAX_CELL) -> str:
    """``text`` cleaned and shortened to ``width`` characters, marked with an ellipsis."""
    text = clean(text)
    return text if len(text) <= width else text[: width - 1] + ELLIPSIS


def when(value: datetime | None) -> str:
    """A timestamp in UTC to the second, or ``-``."""
    if value is None:
        return "-"
    return value.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%SZ")


def table(headers: Sequence[str], rows: Sequence[Sequence[str]], *, width: int = MAX_CELL) -> str:
    """Columns left-aligned under upper-case headers, two spaces apart; every cell cut to
    ``width``. The last column is not padded, so lines carry no trailing blanks."""
    cells = [[cut(c, width) for c in row] for row in rows]
    widths = [len(h) for h in headers]
    for row in cells:
        widths = [max(w, len(c)) for w, c in zip(widths, row, strict=True)]
    lines = []
    for row in [[h.upper() for h in headers], *cells]:
        padded = [c.ljust(w) for c, w in zip(row[:-1], widths, strict=False)]
        lines.append("  ".join([*padded, row[-1]]).rstrip())
    return "\n".join(lines)


def fields(pairs: Sequence[tuple[str, str]]) -> str:
    """``name  value`` lines with the values aligned; values are cleaned but not cut."""
    width = max((len(name) for name, _ in pairs), default=0)
    return "\n".join(f"{name.ljust(width)}  {clean(value)}".rstrip() for name, value in pairs)
