"""The database goes away under load and comes back: the engine, connected through a TCP proxy
that the test cuts for about 10 s, keeps running, says it is not ready, holds results within its
buffer bound, and finishes everything once the database is back.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import aiohttp
import asyncpg
import pytest
import structlog
import structlog.testing

from engine.config import Settings
from engine.delivery.writer import ResultWriter
from tests.support.engines import RunningEngine, launch_engine, wait_until
from tests.support.load import (
    History,
    Load,
    all_delivered,
    check_delivered_once,
    delivered,
    leased,
    make_load,
)
from tests.support.pgproxy import PgProxy
from tests.support.receiver import Receiver, Reply

CUT_S = 10.0
ENDPOINTS = 20
IN_FLIGHT = 4  # per endpoint
# Well below what the endpoints may have leased at once (ENDPOINTS x IN_FLIGHT, across engines,
# queued attempts included): the attempts the engine holds when the database goes away are all it
# can send meanwhile, and they must reach the bound even if the cut caught some endpoints between
# a result and their next claim.
BUFFER_MAX = 20
SETTINGS = Settings(
    request_timeout_s=2.0,
    shutdown_grace_s=4.0,
    poll_interval_s=0.2,
    listener_probe_s=0.5,
    migrate=False,
    admin_port=0,
    result_batch=20,
    result_buffer_max=BUFFER_MAX,
)
HTTP_TIMEOUT = aiohttp.ClientTimeout(total=10)


@pytest.mark.slow
@pytest.mark.parametrize("hold", [False, True], ids=["refused", "partitioned"])
async def test_database_lost_for_10_s_under_load_then_everything_finishes(
    db_url: str, conn: asyncpg.Connection, receiver: Receiver, open_policy: None, hold: bool
) -> None:
    """Cut from its database for 10 s mid-load (refused, or hanging as in a partition), the engine
    keeps running, reports not ready, buffers no more results than its bound allows, and
    delivers everything after the database is back, repeating only what was in flight."""
    # A lease shorter than the test: a claim whose reply the cut swallowed is due again soon.
    await conn.execute("UPDATE webhooks.settings SET lease_duration = '20 seconds'")
    # About 400 deliveries a second: the cut lands in the middle of the load.
    load = await make_load(
        conn,
        receiver,
        endpoints=ENDPOINTS,
        events_per_endpoint=100,
        reply=Reply(delay_s=0.2),
        max_in_flight=IN_FLIGHT,
    )
    with structlog.testing.capture_logs() as logged:
        history, during, peak = await _cut_under_load(db_url, conn, receiver, load, hold=hold)
    # One warning per outage from each part that noticed it, not one per retry.
    warned = Counter(e["event"] for e in logged if e["log_level"] == "warning")
    assert warned["claim_failed"] <= 2, warned
    assert warned["results_write_failed"] <= 2, warned
    print(
        f"cut ({'partition' if hold else 'refused'}) {CUT_S:.0f} s: {load.total} events, "
        f"{history.requests} requests ({during} during the cut), {history.duplicates} "
        f"duplicates, peak buffer {peak} (bound {BUFFER_MAX}); warnings {dict(warned)}"
    )


async def _cut_under_load(
    db_url: str, conn: asyncpg.Connection, receiver: Receiver, load: Load, *, hold: bool
) -> tuple[History, int, int]:
    """Run an engine through the proxy, cut it off mid-load for CUT_S, check it throughout and
    after; returns the history, the requests sent during the cut and the peak buffer."""
    async with PgProxy(db_url) as proxy, _engine(proxy.url) as running:
        engine = running.engine
        assert engine.writer is not None
        assert engine.listener is not None
        writer, listener = engine.writer, engine.listener
        await wait_until(_ready(running), what="ready before the cut")
        await receiver.wait_for(300, timeout_s=60)

        proxy.cut(hold=hold)
        cut_at = time.monotonic()
        in_flight_at_cut = await leased(conn)
        arrived_before = len(receiver.received)
        peak = 0
        not_ready: dict[str, str] = {}
        while time.monotonic() - cut_at < CUT_S:
            peak = max(peak, writer.buffered)
            if not not_ready:
                answer = await _readyz(running)
                if answer["status"] == "not_ready":
                    not_ready = answer["checks"]
            await asyncio.sleep(0.05)
        during = len(receiver.received) - arrived_before
        assert not running.task.done(), "the engine kept running without its database"
        assert not writer.healthy
        assert not listener.connected
        assert not_ready.get("database") in ("unreachable", "timeout"), not_ready
        assert not_ready.get("listener") == "disconnected", not_ready
        # Actors start no attempt while the buffer is full: the bound held, and was reached.
        assert BUFFER_MAX <= peak <= BUFFER_MAX + ENDPOINTS * IN_FLIGHT, peak
        assert during <= BUFFER_MAX + ENDPOINTS * IN_FLIGHT, during
        assert await delivered(conn) < load.total, "the cut came before the last delivery"

        proxy.restore()
        await wait_until(
            lambda: all_delivered(conn, load), timeout_s=120, what="every delivery done"
        )
        await wait_until(_ready(running), timeout_s=30, what="ready again")
        assert _drained(writer), "every buffered result was written"
        assert proxy.refused > 0 or hold, "the engine tried to reconnect while cut"
    history = await check_delivered_once(conn, receiver, load, may_repeat=in_flight_at_cut)
    return history, during, peak


async def test_database_refusing_connections_does_not_stop_the_engine(
    db_url: str,
    pg_server_url: str,
    conn: asyncpg.Connection,
    receiver: Receiver,
    open_policy: None,
) -> None:
    """Regression: a server that refuses new connections (ALLOW_CONNECTIONS false, as during
    maintenance) made the dispatcher's reconnect raise a Postgres error that stopped the engine;
    now the engine waits it out, not ready, and finishes the load afterwards."""
    # A claim cut off by the termination may still commit: its leases must run out soon (the
    # lease must outlast the request timeout by the actor's margin).
    await conn.execute(
        "UPDATE webhooks.settings SET request_timeout_s = 2, lease_duration = '15 seconds'"
    )
    load = await make_load(
        conn, receiver, endpoints=10, events_per_endpoint=50, reply=Reply(delay_s=0.2)
    )
    database = await conn.fetchval("SELECT current_database()")
    admin = await asyncpg.connect(pg_server_url)
    try:
        async with _engine(db_url) as running:
            await receiver.wait_for(100, timeout_s=60)
            await admin.execute(f'ALTER DATABASE "{database}" ALLOW_CONNECTIONS false')
            try:
                in_flight = await leased(conn)
                await conn.execute(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                    " WHERE datname = current_database() AND pid <> pg_backend_pid()"
                )
                refused_until = time.monotonic() + 5
                answer = await _readyz(running)
                while time.monotonic() < refused_until:
                    assert not running.task.done(), "the engine stopped"
                    await asyncio.sleep(0.1)
                assert answer["checks"]["database"] in ("unreachable", "timeout"), answer
            finally:
                await admin.execute(f'ALTER DATABASE "{database}" ALLOW_CONNECTIONS true')
            await wait_until(lambda: all_delivered(conn, load), timeout_s=90, what="every delivery")
            await wait_until(_ready(running), timeout_s=30, what="ready again")
    finally:
        await admin.close()
    await check_delivered_once(conn, receiver, load, may_repeat=in_flight)


@contextlib.asynccontextmanager
async def _engine(database_url: str) -> AsyncIterator[RunningEngine]:
    """An in-process engine on ``database_url``; stopped gracefully at exit."""
    running = await launch_engine(SETTINGS, database_url)
    try:
        yield running
    finally:
        await running.stop()


async def _readyz(running: RunningEngine) -> dict[str, Any]:
    """The /readyz answer as JSON (its status code says the same as its ``status``)."""
    assert running.engine.admin_url is not None
    async with (
        aiohttp.ClientSession(timeout=HTTP_TIMEOUT) as session,
        session.get(running.engine.admin_url + "/readyz") as response,
    ):
        body: dict[str, Any] = await response.json()
        assert (response.status == 200) == (body["status"] == "ready"), body
        return body


def _ready(running: RunningEngine) -> Callable[[], Awaitable[bool]]:
    """A wait_until predicate: /readyz says ready (the last answer is printed, for a failure)."""

    async def check() -> bool:
        answer = await _readyz(running)
        print("readyz:", answer)
        return bool(answer["status"] == "ready")

    return check


def _drained(writer: ResultWriter) -> bool:
    return writer.healthy and writer.buffered == 0
