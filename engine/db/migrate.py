"""The migration runner behind ``misar-webhooks migrate`` (and ``run``, which migrates first).

Two engines starting together must not both migrate, so the whole run holds a session advisory
lock; each pending file is applied in its own transaction and recorded with its sha256. An applied
file whose text changed since is refused (never edit a merged migration), as is a database that has
migrations this engine does not know (it is older than the schema). Function files are re-applied
when their text changed, after the migrations, under the same lock.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import asyncpg
from asyncpg.pool import PoolConnectionProxy

from engine.db import sqlfiles
from engine.errors import MigrationError, SchemaOutdated

# A dedicated connection or one borrowed from a pool.
Connection = asyncpg.Connection | PoolConnectionProxy

LOCK_KEY = 0x6D697361  # "misa": one advisory-lock key for every runner of this schema

BOOKKEEPING = """
CREATE SCHEMA IF NOT EXISTS webhooks;
CREATE TABLE IF NOT EXISTS webhooks.schema_migrations (
    version    integer PRIMARY KEY,
    name       text NOT NULL,
    sha256     text NOT NULL,
    applied_at timestamptz NOT NULL DEFAULT now()
);
CREATE TABLE IF NOT EXISTS webhooks.schema_functions (
    name       text PRIMARY KEY,
    sha256     text NOT NULL,
    applied_at timestamptz NOT NULL DEFAULT now()
);
"""


@dataclass
class MigrationReport:
    """What one run did; empty lists mean it was a no-op."""

    applied: list[str] = field(default_factory=list)
    functions: list[str] = field(default_factory=list)

    @property
    def changed(self) -> bool:
        return bool(self.applied or self.functions)


async def migrate(conn: Connection, root: Path | None = None) -> MigrationReport:
    """Apply pending migrations and changed function files; see the module docstring.

    ``root`` is the SQL tree to apply (default: the one shipped with the engine).
    """
    report = MigrationReport()
    await conn.execute("SELECT pg_advisory_lock($1)", LOCK_KEY)
    try:
        async with conn.transaction():
            await conn.execute(BOOKKEEPING)
        applied = await _applied(conn)
        for migration in sqlfiles.migrations(root):
            known = applied.pop(migration.version, None)
            if known is not None:
                if known != migration.sha256:
                    raise MigrationError(
                        f"migration {migration.name} was changed after it was applied "
                        f"(recorded sha256 {known[:12]}, file {migration.sha256[:12]}); "
                        "never edit an applied migration, add a new one"
                    )
                continue
            async with conn.transaction():
                await conn.execute(migration.text)
                await conn.execute(
                    "INSERT INTO webhooks.schema_migrations (version, name, sha256) "
                    "VALUES ($1, $2, $3)",
                    migration.version,
                    migration.name,
                    migration.sha256,
                )
            report.applied.append(migration.name)
        if applied:
            raise MigrationError(
                f"the database has migrations this engine does not know: {sorted(applied)}; "
                "run a newer misar-webhooks"
            )
        report.functions = await _apply_functions(conn, root)
        if report.changed:
            await conn.execute("SELECT webhooks.maintain_v1()")
    finally:
        await conn.execute("SELECT pg_advisory_unlock($1)", LOCK_KEY)
    return report


async def _applied(conn: Connection) -> dict[int, str]:
    rows = await conn.fetch("SELECT version, sha256 FROM webhooks.schema_migrations")
    return {int(r["version"]): str(r["sha256"]) for r in rows}


async def _apply_functions(conn: Connection, root: Path | None) -> list[str]:
    rows = await conn.fetch("SELECT name, sha256 FROM webhooks.schema_functions")
    recorded = {str(r["name"]): str(r["sha256"]) for r in rows}
    files = sqlfiles.function_files(root)
    if all(recorded.get(f.name) == f.sha256 for f in files):
        return []
    # Re-apply all of them in one transaction: later files may depend on earlier ones.
    async with conn.transaction():
        for f in files:
            await conn.execute(f.text)
            await conn.execute(
                "INSERT INTO webhooks.schema_functions (name, sha256) VALUES ($1, $2) "
                "ON CONFLICT (name) DO UPDATE SET sha256 = EXCLUDED.sha256, applied_at = now()",
                f.name,
                f.sha256,
            )
    return [f.name for f in files if recorded.get(f.name) != f.sha256]


async def check_current(conn: Connection) -> None:
    """Raise SchemaOutdated unless every migration and function file is applied as shipped."""
    try:
        applied = await _applied(conn)
        rows = await conn.fetch("SELECT name, sha256 FROM webhooks.schema_functions")
    except asyncpg.UndefinedTableError as exc:
        raise SchemaOutdated() from exc
    functions = {str(r["name"]): str(r["sha256"]) for r in rows}
    expected = {m.version: m.sha256 for m in sqlfiles.migrations()}
    if applied != expected or any(
        functions.get(f.name) != f.sha256 for f in sqlfiles.function_files()
    ):
        raise SchemaOutdated()
