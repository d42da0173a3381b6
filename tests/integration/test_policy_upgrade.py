"""Migration 0008 (the per-endpoint policy) upgrades a live database under an engine of the
previous release, with deliveries leased and waiting for their retry.

The previous release is rebuilt as it shipped, and its engine's calls are
:class:`tests.support.previous_release.PreviousReleaseStore`'s. Between the migrations' commits and
the re-applied function files that engine runs its old bodies against the new columns; after them
it runs the new bodies, beside an engine of this release.
"""

from __future__ import annotations

from pathlib import Path

import asyncpg
import pytest

from engine.app import check_lease
from engine.db.migrate import migrate
from engine.db.store import Store
from engine.errors import ConfigError
from engine.models import AttemptOutcome, EndpointOptions
from tests.support.factories import outcome
from tests.support.previous_release import (
    PreviousReleaseStore,
    upgrade_window_tree,
)


async def emit(conn: asyncpg.Connection, n: int) -> None:
    await conn.execute(
        "SELECT webhooks.emit('acct_1', 'email.sent', '{}') FROM generate_series(1, $1)", n
    )


async def test_old_engine_carries_on_through_the_upgrade_beside_a_new_one(
    old_db: asyncpg.Connection, old_pool: asyncpg.Pool, tmp_path: Path
) -> None:
    """Leases and retries taken before 0008 are recorded under the old bodies on the new columns
    and under the new bodies after; the new engine's claim gives the defaults of the policy (no
    headers, the settings' timeout), and endpoints with a policy can be created at once."""
    old = PreviousReleaseStore(old_pool)
    await old.create_endpoint("acct_1", "https://example.com/hook", EndpointOptions())
    await old_db.execute("UPDATE webhooks.settings SET retry_schedule = '{1 hour}'")
    await emit(old_db, 4)
    first = await old.claim({}, default_room=2, max_rows=2)
    assert len(first) == 2
    [retried] = await old.record([outcome(first[0][0], 500)])
    assert retried.outcome is AttemptOutcome.RETRY

    # The migration is committed; the function files are not yet re-applied.
    await migrate(old_db, root=upgrade_window_tree(tmp_path / "mid"))
    await emit(old_db, 1)
    second = await old.claim({}, default_room=2, max_rows=2)
    assert len(second) == 2
    [delivered] = await old.record([outcome(first[1][0], 200)])
    assert delivered.outcome is AttemptOutcome.DELIVERED

    report = await migrate(old_db)
    assert {"20_endpoints.sql", "40_claim.sql", "50_record.sql"} <= set(report.functions)
    results = await old.record([outcome(d, 200) for d, _ in second])
    assert [r.outcome for r in results] == [AttemptOutcome.DELIVERED] * 2
    new = Store(old_pool)
    [(last, config)] = await new.claim({}, default_room=8, max_rows=8)
    assert (dict(config.headers), config.timeout_s) == ({}, 10)
    [done] = await new.record([outcome(last, 200)])
    assert done.outcome is AttemptOutcome.DELIVERED
    await new.create_endpoint(
        "acct_1",
        "https://example.com/other",
        EndpointOptions(headers={"X-Key": "k"}, filter="$.a == 1", timeout_s=20),
    )
    assert await old_db.fetchval("SELECT count(*) FROM webhooks.deliveries") == 1  # the retry


async def test_a_lease_left_too_short_is_caught_at_engine_start(
    old_db: asyncpg.Connection, old_pool: asyncpg.Pool
) -> None:
    """A lease the previous release accepted but that no attempt fits in upgrades without
    failing; the engine's start check then refuses it, naming both values, and the fix passes."""
    await old_db.execute("UPDATE webhooks.settings SET lease_duration = '12 seconds'")
    await migrate(old_db)
    new = Store(old_pool)
    with pytest.raises(ConfigError, match=r"lease_duration \(12 s\).*\(10 s\)"):
        check_lease(await new.policy())
    await old_db.execute("UPDATE webhooks.settings SET request_timeout_s = 5")
    check_lease(await new.policy())
