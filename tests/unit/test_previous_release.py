"""The previous release's archive (tests/support/release_5841c63.tar.gz) is that release: its SQL
is the copy the upgrade tests build from, and its migrations are the ones this release ships under
the same names, byte for byte (an engine refuses a database whose applied migration changed)."""

from __future__ import annotations

import tarfile

from engine.db import sqlfiles
from tests.support.previous_release import (
    RELEASE_ARCHIVE,
    RELEASE_LAST_MIGRATION,
    RELEASE_SQL,
)


def _archived() -> dict[str, bytes]:
    with tarfile.open(RELEASE_ARCHIVE) as archive:
        files = {}
        for member in archive.getmembers():
            extracted = archive.extractfile(member) if member.isfile() else None
            if extracted is not None:
                files[member.name] = extracted.read()
    return files


def test_its_sql_is_the_copy_the_upgrade_tests_use() -> None:
    archived = _archived()
    copied = {path.name: path.read_bytes() for path in RELEASE_SQL.iterdir()}
    functions = {
        name.removeprefix("sql/functions/"): text
        for name, text in archived.items()
        if name.startswith("sql/functions/")
    }
    assert functions == {k: v for k, v in copied.items() if k != "queries.sql"}
    assert archived["sql/queries.sql"] == copied["queries.sql"]


def test_its_migrations_are_this_releases_first_ones() -> None:
    archived = {
        name.removeprefix("sql/migrations/"): text
        for name, text in _archived().items()
        if name.startswith("sql/migrations/")
    }
    shipped = {
        path.name: path.read_bytes()
        for path in (sqlfiles.sql_root() / "migrations").iterdir()
        if int(path.name[:4]) <= RELEASE_LAST_MIGRATION
    }
    assert len(shipped) == RELEASE_LAST_MIGRATION
    assert archived == shipped


def test_it_holds_a_runnable_engine_package() -> None:
    archived = _archived()
    assert "engine/__main__.py" in archived
    assert "engine/cli/main.py" in archived
