"""Finds the SQL shipped with the engine and parses ``queries.sql``.

In a wheel the ``sql/`` tree is force-included as ``engine/sql``; in a source checkout it is the
repository's top-level ``sql/``. Both are found next to the engine package, so a plain
``pip install .`` finds its
migrations.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from functools import cache
from pathlib import Path

MIGRATION_NAME = re.compile(r"^(?P<version>\d{4})_(?P<name>[a-z0-9_]+)\.sql$")
QUERY_HEADER = re.compile(r"^--\s*name:\s*(?P<name>[a-z_][a-z0-9_]*)\s*$", re.MULTILINE)


@dataclass(frozen=True)
class SqlFile:
    """One SQL file: its name, text and sha256 (what `migrate` records and later compares)."""

    name: str
    text: str

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.text.encode()).hexdigest()


@dataclass(frozen=True)
class Migration(SqlFile):
    """A numbered migration file, applied once, in version order."""

    version: int


def sql_root() -> Path:
    """The directory holding ``migrations/``, ``functions/`` and ``queries.sql``."""
    package = Path(__file__).resolve().parent.parent  # engine/
    packaged = package / "sql"
    if packaged.is_dir():
        return packaged
    checkout = package.parent / "sql"
    if checkout.is_dir():
        return checkout
    raise FileNotFoundError(f"no sql/ directory next to the engine package (looked in {packaged})")


def migrations(root: Path | None = None) -> list[Migration]:
    """All migration files in version order; a misnamed file or a repeated version is an error."""
    folder = (root or sql_root()) / "migrations"
    found: list[Migration] = []
    for path in sorted(folder.iterdir()):
        if path.suffix != ".sql":
            continue
        match = MIGRATION_NAME.match(path.name)
        if match is None:
            raise ValueError(f"migration file {path.name!r} is not named NNNN_snake_case.sql")
        found.append(
            Migration(name=path.name, text=path.read_text(), version=int(match["version"]))
        )
    versions = [m.version for m in found]
    if len(set(versions)) != len(versions):
        raise ValueError(f"two migration files share a version in {folder}")
    return found


def function_files(root: Path | None = None) -> list[SqlFile]:
    """The re-appliable files (functions, views, triggers), in file-name order."""
    folder = (root or sql_root()) / "functions"
    return [
        SqlFile(name=path.name, text=path.read_text())
        for path in sorted(folder.iterdir())
        if path.suffix == ".sql"
    ]


@cache
def queries() -> dict[str, str]:
    """The named statements of ``queries.sql`` (``-- name: x`` blocks), parsed once."""
    text = (sql_root() / "queries.sql").read_text()
    parts = QUERY_HEADER.split(text)
    named: dict[str, str] = {}
    for name, body in zip(parts[1::2], parts[2::2], strict=True):
        statement = body.strip().rstrip(";").strip()
        if name in named:
            raise ValueError(f"queries.sql names {name!r} twice")
        named[name] = statement
    return named
