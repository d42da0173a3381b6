"""An upgrade under load, as a deployment does it: the previous release's engine (a real process of
that release's code, tests/support/release_5841c63.tar.gz) delivers while the app emits; it is
stopped, or it dies, and this release's engine starts, migrates the live database (every migration
from 0006 on and the new function files, with deliveries pending and the app still emitting) and
delivers the rest. Every event is delivered, once; after a death, only what the dead engine held
leased may be sent twice.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg
import pytest

from engine.db import sqlfiles
from tests.support.engines import create_endpoint, wait_until
from tests.support.load import (
    Load,
    account_of,
    all_delivered,
    check_delivered_once,
    emit_many,
    leased,
    no_session_of,
)
from tests.support.previous_release import RELEASE_LAST_MIGRATION, release_engine
from tests.support.processes import engine_process
from tests.support.receiver import Receiver

ENDPOINTS = 10
EVENTS_PER_ROUND = 2  # per endpoint, in one app transaction per endpoint
# How far the app may run ahead of the receiver, in events: enough for the rounds it emits while
# no engine runs, and a bound on what the new engine has to catch up with. Unbounded, an app whose
# emits cost a one-row insert wrote 150,000 events in the 16 s a dead engine's leases ran.
AHEAD = 2_000

# That release's engine migrates the empty database to its own schema as it starts.
MIGRATE = {"WEBHOOKS_MIGRATE": "true"}
# A dead engine's leases hold its deliveries until they run out: short here, but longer than this
# release's lease check asks of the default request timeout (10 s, plus a 5 s margin).
SHORT_LEASE = "16 seconds"


class App:
    """MisarMail's app emitting for every endpoint's account, round after round, until stopped:
    the load the upgrade runs under. Each round is one transaction per account; a round waits
    while the receiver is more than AHEAD events behind, unless the test granted it more."""

    def __init__(self, conn: asyncpg.Connection, paths: list[str], receiver: Receiver) -> None:
        self._conn = conn
        self._receiver = receiver
        self.events: dict[str, list[int]] = {path: [] for path in paths}
        self.rounds = 0
        self._granted = 0  # events beyond AHEAD
        self._grant = asyncio.Event()
        self._stop = asyncio.Event()

    def grant(self, rounds: int) -> None:
        """Lets the app emit ``rounds`` more rounds whatever the receiver has received: while no
        engine runs the receiver gets nothing, and the test waits for the app to emit then."""
        self._granted += rounds * len(self.events) * EVENTS_PER_ROUND
        self._grant.set()

    async def _within_reach(self) -> None:
        while True:
            emitted = sum(len(ids) for ids in self.events.values())
            behind = emitted - AHEAD - self._granted
            if behind <= 0:
                return
            self._grant.clear()
            caught_up = asyncio.ensure_future(self._receiver.wait_for(behind, timeout_s=120))
            stopped = asyncio.ensure_future(self._stop.wait())
            granted = asyncio.ensure_future(self._grant.wait())
            done, pending = await asyncio.wait(
                {caught_up, stopped, granted}, return_when=asyncio.FIRST_COMPLETED
            )
            for task in pending:
                task.cancel()
            if caught_up in done:
                caught_up.result()  # the receiver's time-out fails the test
            if granted not in done:
                return

    async def run(self) -> None:
        while not self._stop.is_set():
            await self._within_reach()
            if self._stop.is_set():
                break
            for path in self.events:
                self.events[path] += await emit_many(self._conn, account_of(path), EVENTS_PER_ROUND)
            self.rounds += 1
            await asyncio.sleep(0)  # let the test's own checks run between rounds

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[App]:
        task = asyncio.get_running_loop().create_task(self.run())
        try:
            yield self
        finally:
            self._stop.set()
            await task  # an emit that failed during the upgrade fails the test here

    async def rounds_past(self, rounds: int) -> bool:
        return self.rounds >= rounds

    def load(self) -> Load:
        return Load({path: list(ids) for path, ids in self.events.items()})


async def _schema_version(conn: asyncpg.Connection) -> int:
    return int(await conn.fetchval("SELECT max(version) FROM webhooks.schema_migrations"))


@pytest.mark.parametrize("ending", ["SIGTERM", "SIGKILL"])
async def test_previous_release_ends_and_this_one_migrates_under_load(
    empty_db_url: str, receiver: Receiver, tmp_path: Path, ending: str
) -> None:
    """The old engine delivers part of the app's events and is stopped (SIGTERM) or dies
    (SIGKILL) while the app keeps emitting; the new one starts on that live database with
    deliveries pending, migrates it while the app emits, and delivers everything: every event
    once, but for a dead engine's leased deliveries, which may go twice."""
    release = release_engine(tmp_path / "release")
    paths = [f"/up{i}" for i in range(ENDPOINTS)]
    app_conn = await asyncpg.connect(empty_db_url)
    conn = await asyncpg.connect(empty_db_url)
    try:
        async with contextlib.AsyncExitStack() as engines:
            old = await engines.enter_async_context(
                engine_process(f"{empty_db_url}?application_name=old", MIGRATE, release=release)
            )
            await old.logged("engine_started")
            assert await _schema_version(conn) == RELEASE_LAST_MIGRATION
            await conn.execute(
                "UPDATE webhooks.settings SET allow_http = true, allow_private_networks = true,"
                f" lease_duration = '{SHORT_LEASE}'"
            )
            # The engine applies settings when their NOTIFY reaches it: an event sent before
            # that would be refused as http:// and wait minutes for its retry.
            reloaded = await old.logged("settings_reloaded")
            assert reloaded["allow_http"] is True
            for path in paths:
                await create_endpoint(conn, receiver.url(path), account=account_of(path))

            app = App(app_conn, paths, receiver)
            async with app.running():
                # The old engine delivers a share of the load, then ends.
                await receiver.wait_for(10 * ENDPOINTS, timeout_s=60)
                held: set[int] = set()
                if ending == "SIGTERM":
                    await old.stop()
                else:
                    old.kill()
                    assert await old.wait() == -signal.SIGKILL
                    # A statement the dead engine sent may still commit: read once it is gone.
                    await wait_until(lambda: no_session_of(conn, "old"), what="its sessions gone")
                    held = await leased(conn)
                by_old = len(receiver.received)
                # No engine runs: the app's events wait, with whatever the old engine released.
                rounds = app.rounds
                app.grant(3)  # the receiver gets nothing now, and the app may be AHEAD already
                await wait_until(lambda: app.rounds_past(rounds + 3), what="the app emitting")
                pending = await conn.fetchval("SELECT count(*) FROM webhooks.deliveries")
                assert pending > 0, "the upgrade starts with deliveries in flight"

                new = await engines.enter_async_context(engine_process(empty_db_url, MIGRATE))
                await new.logged("engine_started")
                latest = max(m.version for m in sqlfiles.migrations())
                assert latest > RELEASE_LAST_MIGRATION
                assert await _schema_version(conn) == latest
                # The new engine delivers what waited and what the app keeps emitting.
                await receiver.wait_for(by_old + pending + 10 * ENDPOINTS, timeout_s=60)
                rounds = app.rounds
                await wait_until(lambda: app.rounds_past(rounds + 3), what="the app emitting")
            # The app stopped; the new engine delivers the rest, then stops too.
            load = app.load()
            await wait_until(
                lambda: all_delivered(conn, load), timeout_s=120, what="every delivery done"
            )
            await new.stop()
        history = await check_delivered_once(conn, receiver, load, may_repeat=held)
        if ending == "SIGTERM":
            assert history.duplicates == 0
        assert 0 < by_old < load.total
    finally:
        await app_conn.close()
        await conn.close()
