"""The migration runner on a real Postgres: fresh apply, no-op re-run, concurrency, checksums."""

from __future__ import annotations

import asyncio
import hashlib
import re
import shutil
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path

import asyncpg
import pytest

from engine.db import sqlfiles
from engine.db.migrate import check_current, migrate
from engine.errors import MigrationError, SchemaOutdated

NAME = re.compile(r"^\d{4}_[a-z0-9]+(?:_[a-z0-9]+)*\.sql$")


@pytest.fixture
async def empty_conn(empty_db_url: str) -> AsyncIterator[asyncpg.Connection]:
    """A connection to a database with no schema at all."""
    connection = await asyncpg.connect(empty_db_url)
    try:
        yield connection
    finally:
        await connection.close()


@pytest.fixture
def sql_copy(tmp_path: Path) -> Path:
    """A copy of the shipped sql/ tree that a test may change."""
    root = tmp_path / "sql"
    shutil.copytree(sqlfiles.sql_root(), root)
    return root


def next_file(name: str) -> str:
    """A migration file name numbered after the last one shipped."""
    return f"{max(shipped_versions()) + 1:04d}_{name}.sql"


def shipped_versions() -> list[int]:
    return [m.version for m in sqlfiles.migrations()]


async def recorded(conn: asyncpg.Connection) -> list[tuple[int, str, str]]:
    rows = await conn.fetch(
        "SELECT version, name, sha256 FROM webhooks.schema_migrations ORDER BY 1"
    )
    return [(r["version"], r["name"], r["sha256"]) for r in rows]


async def test_fresh_apply(empty_conn: asyncpg.Connection) -> None:
    """On an empty database every migration and function file is applied and recorded."""
    report = await migrate(empty_conn)
    migrations = sqlfiles.migrations()
    assert report.applied == [m.name for m in migrations]
    assert report.functions == [f.name for f in sqlfiles.function_files()]
    assert await recorded(empty_conn) == [
        (m.version, m.name, hashlib.sha256(m.text.encode()).hexdigest()) for m in migrations
    ]
    for table in ("settings", "endpoints", "events", "deliveries", "attempts", "delivery_outcomes"):
        assert await empty_conn.fetchval("SELECT to_regclass($1)", f"webhooks.{table}") is not None
    today = f"webhooks.events_p{datetime.now(UTC):%Y%m%d}"
    assert await empty_conn.fetchval("SELECT to_regclass($1)", today) is not None
    assert await empty_conn.fetchval("SELECT webhooks.emit('a', 'email.sent', '{}')") is None
    await check_current(empty_conn)


async def test_rerun_is_a_no_op(empty_conn: asyncpg.Connection) -> None:
    """A second run applies nothing and leaves the bookkeeping rows untouched."""
    await migrate(empty_conn)
    migrations_before = await empty_conn.fetch("SELECT * FROM webhooks.schema_migrations")
    functions_before = await empty_conn.fetch("SELECT * FROM webhooks.schema_functions")
    report = await migrate(empty_conn)
    assert report.applied == []
    assert report.functions == []
    assert not report.changed
    assert await empty_conn.fetch("SELECT * FROM webhooks.schema_migrations") == migrations_before
    assert await empty_conn.fetch("SELECT * FROM webhooks.schema_functions") == functions_before


async def test_two_runs_at_once_apply_once(empty_db_url: str) -> None:
    """Two concurrent runs both succeed, and each migration is applied exactly once."""
    first, second = await asyncpg.connect(empty_db_url), await asyncpg.connect(empty_db_url)
    try:
        reports = await asyncio.gather(migrate(first), migrate(second))
        names = [m.name for m in sqlfiles.migrations()]
        assert sorted(r.applied for r in reports) == [[], names]
        assert len(await recorded(first)) == len(names)
        await check_current(second)
    finally:
        await first.close()
        await second.close()


async def test_changed_checksum_is_refused(conn: asyncpg.Connection) -> None:
    """A recorded sha256 that differs from the file stops migrate and fails check_current."""
    await conn.execute("UPDATE webhooks.schema_migrations SET sha256 = repeat('0', 64)")
    with pytest.raises(MigrationError, match=r"0001_initial\.sql was changed after it was applied"):
        await migrate(conn)
    with pytest.raises(SchemaOutdated):
        await check_current(conn)


async def test_edited_migration_file_is_refused(conn: asyncpg.Connection, sql_copy: Path) -> None:
    """Running a tree whose applied migration was edited raises and changes nothing."""
    initial = sql_copy / "migrations" / "0001_initial.sql"
    initial.write_text(initial.read_text() + "\nCREATE TABLE webhooks.sneaky (id int);\n")
    before = await recorded(conn)
    with pytest.raises(MigrationError, match="never edit an applied migration"):
        await migrate(conn, root=sql_copy)
    assert await conn.fetchval("SELECT to_regclass('webhooks.sneaky')") is None
    assert await recorded(conn) == before


async def test_new_migration_is_applied_alone(conn: asyncpg.Connection, sql_copy: Path) -> None:
    """A new numbered file is applied and recorded; applied ones are left alone."""
    (sql_copy / "migrations" / next_file("add_note")).write_text(
        "ALTER TABLE webhooks.endpoints ADD COLUMN note text;\n"
    )
    report = await migrate(conn, root=sql_copy)
    assert report.applied == [next_file("add_note")]
    assert report.functions == []
    assert [v for v, _, _ in await recorded(conn)] == [
        *shipped_versions(),
        max(shipped_versions()) + 1,
    ]
    assert (
        await conn.fetchval(
            "SELECT count(*) FROM information_schema.columns "
            "WHERE table_schema = 'webhooks' AND table_name = 'endpoints' AND column_name = 'note'"
        )
        == 1
    )
    assert not (await migrate(conn, root=sql_copy)).changed


async def test_failing_migration_leaves_nothing(conn: asyncpg.Connection, sql_copy: Path) -> None:
    """A migration that fails midway is rolled back whole and not recorded; the lock is released."""
    (sql_copy / "migrations" / next_file("broken")).write_text(
        "CREATE TABLE webhooks.half_done (id int);\nSELECT 1 / 0;\n"
    )
    with pytest.raises(asyncpg.DivisionByZeroError):
        await migrate(conn, root=sql_copy)
    assert await conn.fetchval("SELECT to_regclass('webhooks.half_done')") is None
    assert [v for v, _, _ in await recorded(conn)] == shipped_versions()
    assert (
        await conn.fetchval(
            "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND pid = pg_backend_pid()"
        )
        == 0
    )
    assert not (await migrate(conn)).changed


async def test_unknown_applied_migration_is_refused(conn: asyncpg.Connection) -> None:
    """A database with a migration this engine does not ship is refused as newer than the engine."""
    await conn.execute(
        "INSERT INTO webhooks.schema_migrations (version, name, sha256) "
        "VALUES (9999, '9999_from_the_future.sql', repeat('f', 64))"
    )
    with pytest.raises(MigrationError, match="does not know"):
        await migrate(conn)
    with pytest.raises(SchemaOutdated):
        await check_current(conn)


async def test_changed_function_file_is_reapplied(conn: asyncpg.Connection, sql_copy: Path) -> None:
    """A function file whose text changed is re-applied, with no migration re-run."""
    emit = sql_copy / "functions" / "30_emit.sql"
    emit.write_text(
        emit.read_text()
        + "\nCREATE FUNCTION webhooks.probe_v1() RETURNS int LANGUAGE sql AS 'SELECT 7';\n"
    )
    report = await migrate(conn, root=sql_copy)
    assert report.applied == []
    assert report.functions == ["30_emit.sql"]
    assert await conn.fetchval("SELECT webhooks.probe_v1()") == 7
    sha = await conn.fetchval(
        "SELECT sha256 FROM webhooks.schema_functions WHERE name = '30_emit.sql'"
    )
    assert sha == hashlib.sha256(emit.read_text().encode()).hexdigest()


async def test_check_current_refuses_an_empty_database(empty_conn: asyncpg.Connection) -> None:
    """check_current raises SchemaOutdated before the first migrate."""
    with pytest.raises(SchemaOutdated):
        await check_current(empty_conn)


def test_migration_files_are_named_nnnn_snake_case() -> None:
    """Every shipped migration is named NNNN_snake_case.sql, numbered 1, 2, 3, ... without gaps."""
    folder = sqlfiles.sql_root() / "migrations"
    names = sorted(p.name for p in folder.iterdir())
    assert names
    assert [n for n in names if not NAME.match(n)] == []
    assert [int(n[:4]) for n in names] == list(range(1, len(names) + 1))


@pytest.mark.parametrize("bad_name", ["2_short.sql", "0002-dashes.sql", "0002_CamelCase.sql"])
def test_misnamed_migration_is_an_error(sql_copy: Path, bad_name: str) -> None:
    """The runner refuses to load a migration file that is not named NNNN_snake_case.sql."""
    (sql_copy / "migrations" / bad_name).write_text("SELECT 1;\n")
    with pytest.raises(ValueError, match="NNNN_snake_case"):
        sqlfiles.migrations(sql_copy)


def test_repeated_migration_version_is_an_error(sql_copy: Path) -> None:
    """Two migration files with the same number are refused."""
    (sql_copy / "migrations" / "0001_again.sql").write_text("SELECT 1;\n")
    with pytest.raises(ValueError, match="share a version"):
        sqlfiles.migrations(sql_copy)
