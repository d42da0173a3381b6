"""No measured figures or bench ids in the comments and docstrings of engine/ and sql/.

A figure in a comment goes stale the day the code or the machine changes, and nothing fails when
it does; in a migration it can never be fixed (migrations are checksummed). Figures live in
bench/README.md and docs/decisions/, each with the command that measures it (STYLE.md, Habits).

The rule, precisely. A hit is either
- a number (digits, optionally with thousands commas and a decimal part, optionally a range such as
  ``100-270`` or ``0.5 to 0.7``) followed, after at most one space, by a time unit (ns, µs, us, ms,
  s, sec, second(s), min, minute(s), h, hour(s)), a percentage (%, percent), a size (B, kB, KB,
  KiB, MB, MiB, GB, GiB), a rate (/s, per second) or, written straight after the number, a
  multiplier (``2.3x``, or with the multiplication sign); the unit must end the word;
- or a bench workload id, ``W1`` to ``W9`` as a word.
Counts without a unit (rows, buffers, endpoints), days and bits are not checked: those are how
limits and protocol facts are written, and a rule that caught them would need a long allow-list.
A setting, a default or a protocol constant written with a unit is a hit like a measurement: name
the setting instead (``the request timeout``), since its value can change too. The few phrases
that must keep a unit are in ALLOWED, each with its reason.

Scanned: every comment (tokenize) and docstring (ast) of engine/**/*.py, and every ``--`` comment
of sql/functions/*.sql and sql/queries.sql (outside single-quoted strings). sql/migrations/ is not
scanned: applied migrations cannot change; the comments known stale there are listed in
docs/decisions/.
"""

from __future__ import annotations

import ast
import io
import re
import tokenize
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

_NUMBER = r"\d+(?:,\d{3})*(?:\.\d+)?"
_UNIT = (
    r"ns|µs|us|ms|s|secs?|seconds?|min|minutes?|h|hours?"
    r"|%|percent|B|kB|KB|KiB|MB|MiB|GB|GiB|/s|per\s+second"
)
FIGURE = re.compile(
    rf"(?<![\w.]){_NUMBER}(?:\s?(?:-|\u2013|to)\s?{_NUMBER})?"  # hyphen, en dash or "to"
    rf"(?:\s?(?:{_UNIT})(?![\w])|[x\u00d7](?![\w]))"  # a unit, or x or the multiplication sign
    r"|\bW[1-9]\b"
)

# Exact phrases whose units are part of a syntax, not a measurement. Keep this tiny.
ALLOWED = (
    # engine/cli/args.py: the CLI's duration syntax, as the user types it.
    "90s, 15m, 2h, 1d, 1w",
    "(15m, 2h, 1d)",
    # engine/cli/main.py: an example of the one-line error for a bad --since value.
    "'5x' is not a time",
)


def figures(text: str) -> list[str]:
    """The figures the rule finds in ``text``, after blanking the allowed phrases."""
    for phrase in ALLOWED:
        text = text.replace(phrase, " " * len(phrase))
    return [m.group(0) for m in FIGURE.finditer(text)]


def _python_texts(path: Path) -> Iterator[tuple[int, str]]:
    """(line, text) of every comment and docstring line of a Python module."""
    source = path.read_text(encoding="utf-8")
    for tok in tokenize.generate_tokens(io.StringIO(source).readline):
        if tok.type == tokenize.COMMENT:
            yield tok.start[0], tok.string
    for node in ast.walk(ast.parse(source)):
        if not isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef):
            continue
        if not node.body:
            continue
        first = node.body[0]
        if (
            isinstance(first, ast.Expr)
            and isinstance(first.value, ast.Constant)
            and isinstance(first.value.value, str)
        ):
            for offset, line in enumerate(first.value.value.splitlines()):
                yield first.lineno + offset, line


def sql_comment(line: str) -> str | None:
    """The ``--`` comment of one SQL line, or None; a ``--`` inside a '...' string is not one."""
    quoted = False
    for i, char in enumerate(line):
        if char == "'":
            quoted = not quoted
        elif not quoted and line.startswith("--", i):
            return line[i:]
    return None


def _sql_texts(path: Path) -> Iterator[tuple[int, str]]:
    """(line, text) of every ``--`` comment of an SQL file."""
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        comment = sql_comment(line)
        if comment is not None:
            yield number, comment


def hits() -> list[str]:
    """Every figure in the scanned comments, as ``file:line: figure | text``."""
    found: list[str] = []
    sources = [(p, _python_texts) for p in sorted((ROOT / "engine").rglob("*.py"))]
    sql_files = [*sorted((ROOT / "sql" / "functions").glob("*.sql")), ROOT / "sql" / "queries.sql"]
    sources += [(p, _sql_texts) for p in sql_files]
    for path, texts in sources:
        for number, text in texts(path):
            for figure in figures(text):
                where = path.relative_to(ROOT)
                found.append(f"{where}:{number}: {figure!r} | {text.strip()}")
    return found


def test_comments_hold_no_measured_figures() -> None:
    """No comment or docstring in engine/ or sql/ holds a measured figure or a bench id."""
    found = hits()
    assert not found, "figures in comments (move them to docs/decisions/):\n" + "\n".join(found)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("took 46 ms on PG15 here", ["46 ms"]),
        ("11 % of the engine's samples in bench W2 (py-spy)", ["11 %", "W2"]),
        ("100-270 ms per call instead of 3 ms", ["100-270 ms", "3 ms"]),
        ("0.5-0.7 ms per call", ["0.5-0.7 ms"]),
        ("a peak RSS of 150 MB", ["150 MB"]),
        ("2.3x less server CPU", ["2.3x"]),
        ("a 2\u00d7 speed-up", ["2\u00d7"]),
        ("p99 8.1 \u2192 5.6\u20136.1 ms", ["5.6\u20136.1 ms"]),
        ("0.5 to 0.7 seconds, 1 min later, 45 s behind", ["0.5 to 0.7 seconds", "1 min", "45 s"]),
        ("20,000 events at 4,000/s", ["4,000/s"]),
        ("a 180-row claim (bench W1)", ["W1"]),
        ("one round trip per event", []),
        ("the 16 KiB excerpt cap", ["16 KiB"]),
        ("a positive 64-bit integer, 24 to 64 byte keys, [0, 7 days]", []),
        ("198.18.0.0/15 and 2001::/23, RFC 9110, SQLSTATE WH001", []),
        ("``0`` or a count with a unit: 90s, 15m, 2h, 1d, 1w.", []),
        ("misar-webhooks: error: --since: '5x' is not a time", []),
    ],
)
def test_checker_finds_planted_figures(text: str, expected: list[str]) -> None:
    """The checker finds planted figures and bench ids, and passes units that are not figures."""
    assert figures(text) == expected


def test_sql_comment_ignores_dashes_in_strings() -> None:
    """An SQL ``--`` inside a quoted string is not a comment, one after it is."""
    assert sql_comment("SELECT '--' AS x") is None
    assert sql_comment("SELECT 'a' -- took 3 ms") == "-- took 3 ms"
