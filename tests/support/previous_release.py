"""The release this one upgrades from, for the upgrade tests.

Migrations 0006 to 0010 ship together, so each of them upgrades a database that the last release
before them left: main at 5841c63, whose schema is migrations 0001-0005 and whose function files
(and queries.sql, the engine's calls) are copied unchanged into
``tests/integration/sql_release_0005/``.
An upgrade test migrates a database built from :func:`release_tree` to the shipped tree, with an
engine of that release (:class:`PreviousReleaseStore`) leasing and recording across the upgrade.
The end-to-end upgrade runs that release's engine itself, as a process, from
:data:`RELEASE_ARCHIVE` (``git archive 5841c63 engine sql``; see :func:`release_engine`).

The upgrade tests of 0004 and 0005 test those migrations as that release shipped them: their trees
start from :func:`release_tree` too, with older function files laid over it.
"""

from __future__ import annotations

import shutil
import tarfile
from collections.abc import Iterable
from pathlib import Path

import asyncpg

from engine.db import sqlfiles
from engine.db.store import Store

RELEASE_SQL = Path(__file__).parents[1] / "integration" / "sql_release_0005"
RELEASE_LAST_MIGRATION = 5
# The release's engine package and sql/ tree as it shipped, written by
# `git archive --format=tar 5841c63 engine sql | gzip -9n`: a test cannot count on the checkout
# having that commit. tests/unit/test_previous_release.py holds it equal to RELEASE_SQL and to the
# shipped migrations it had.
RELEASE_ARCHIVE = Path(__file__).with_name("release_5841c63.tar.gz")


def release_engine(root: Path) -> Path:
    """Unpack the previous release (its ``engine`` package and ``sql/``) into ``root``; run it
    with ``root`` first on ``PYTHONPATH``. It uses this environment's libraries, which today's
    release needs at versions that release ran on too."""
    with tarfile.open(RELEASE_ARCHIVE) as archive:
        archive.extractall(root, filter="data")
    return root


def release_tree(
    root: Path, *, through: int = RELEASE_LAST_MIGRATION, overlay: Iterable[Path] = ()
) -> Path:
    """A sql/ tree with the shipped migrations up to ``through`` and the previous release's
    function files, then ``overlay`` (function files of older releases) laid over them.

    ``through`` past that release's last migration gives the window of an upgrade: this release's
    migrations have committed, its function files are not applied yet.
    """
    shutil.copytree(sqlfiles.sql_root() / "migrations", root / "migrations")
    for path in (root / "migrations").iterdir():
        if int(path.name[:4]) > through:
            path.unlink()
    shutil.copytree(RELEASE_SQL, root / "functions", ignore=shutil.ignore_patterns("queries.sql"))
    for path in overlay:
        shutil.copy(path, root / "functions" / path.name)
    return root


def upgrade_window_tree(root: Path) -> Path:
    """Every shipped migration with the previous release's function files (see release_tree)."""
    return release_tree(root, through=10**4)


def _release_queries() -> dict[str, str]:
    parts = sqlfiles.QUERY_HEADER.split((RELEASE_SQL / "queries.sql").read_text())
    return {
        name: body.strip().rstrip(";").strip()
        for name, body in zip(parts[1::2], parts[2::2], strict=True)
    }


# Where today's Python passes more parameters, or reads more columns, than that release's calls
# had: the extra parameters are accepted and ignored (num_nulls(...) >= 0 holds for any values),
# and the extra columns come back as what that release did without them (no start time, no custom
# headers, the request timeout it used).
_ADAPTED = {
    "claim": "SELECT *, 0::double precision AS send_in_s, '{}'::jsonb AS headers, 10 AS timeout_s"
    " FROM webhooks.claim_v1($1::uuid[], $2::integer[], $3::integer, $4::integer, $5::uuid)",
    "create_endpoint": "SELECT id, secret FROM webhooks.create_endpoint($1::text, $2::text,"
    " $3::text[], $4::text, $5::text, $6::integer, $7::text, $8::double precision)"
    " WHERE num_nulls($9::jsonb, $10::text, $11::interval[], $12::integer) >= 0",
    "update_endpoint": "SELECT id FROM webhooks.update_endpoint($1::uuid, $2::text, $3::text[],"
    " $4::text, $5::integer, $6::text, $7::double precision)"
    " WHERE num_nulls($8::jsonb, $9::text, $10::interval[], $11::integer, $12::text[]) >= 0",
    "settings": "SELECT allow_http, allow_private_networks, retry_schedule, max_payload_bytes,"
    " retention, lease_duration, 10 AS request_timeout_s, 10 AS longest_timeout_s"
    " FROM webhooks.settings",
}


class PreviousReleaseStore(Store):
    """A Store making the calls of an engine of the previous release (its queries.sql), so that
    today's Python can stand in for that engine against either schema."""

    def __init__(self, pool: asyncpg.Pool) -> None:
        super().__init__(pool)
        self._q = {**self._q, **_release_queries(), **_ADAPTED}  # the one place calls are swapped
