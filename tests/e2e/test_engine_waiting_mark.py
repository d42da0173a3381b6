"""Only a live, listening engine gets NOTIFYs: the waiting mark of an engine killed asleep expires,
and an engine run without LISTEN never sets it.

Expiry is put in the past with SQL rather than waited for; every wait is on a row or a count.
"""

from __future__ import annotations

import signal
from collections.abc import Awaitable, Callable
from functools import partial

import asyncpg
import pytest

from tests.support.db import listening
from tests.support.engines import RunningEngine, create_endpoint, wait_until
from tests.support.load import delivered, emit_many, only_session
from tests.support.processes import engine_process
from tests.support.receiver import Receiver

StartEngine = Callable[..., Awaitable[RunningEngine]]

MARK_STANDS = "SELECT coalesce(waiting_until > now(), false) FROM webhooks.engine_state"
EXPIRE_MARK = "UPDATE webhooks.engine_state SET waiting_until = now() - interval '1 second'"


async def mark_stands(conn: asyncpg.Connection) -> bool:
    return bool(await conn.fetchval(MARK_STANDS))


async def test_an_engine_killed_asleep_stops_costing_the_app_notifies(
    db_url: str, conn: asyncpg.Connection, receiver: Receiver, open_policy: None
) -> None:
    """An engine SIGKILLed while asleep leaves a mark that only lasts until its expiry: emits after
    it send no NOTIFY, and a restarted engine sweeps at start and delivers them all."""
    await create_endpoint(conn, receiver.url("/hook"))
    async with engine_process(db_url) as engine:
        await wait_until(lambda: mark_stands(conn), what="the engine asleep")
        engine.kill()
        assert await engine.wait() == -signal.SIGKILL
    await wait_until(lambda: only_session(conn), what="the killed engine's sessions gone")

    async with listening(db_url) as wakeups:
        # Until the expiry the dead engine's mark still asks for NOTIFYs: emit decides by the
        # same now() as this read, so the two agree.
        async with conn.transaction():
            await emit_many(conn, "acct_1", 1)
            notified_before = await mark_stands(conn)
        assert await wakeups.drain() == ([""] if notified_before else [])

        await conn.execute(EXPIRE_MARK)
        for _ in range(5):
            await emit_many(conn, "acct_1", 1)
        assert len(await wakeups.drain()) == int(notified_before)
    assert await delivered(conn) == 0

    async with engine_process(db_url) as engine:
        await receiver.wait_for(6, path="/hook")
        await wait_until(lambda: delivered_all(conn, 6), what="every result recorded")
        # Asleep again and listening: the new engine asks for NOTIFYs once more.
        await wait_until(lambda: mark_stands(conn), what="the new engine asleep")
        engine.signal(signal.SIGTERM)
        assert await engine.wait() == 0


async def delivered_all(conn: asyncpg.Connection, count: int) -> bool:
    return await delivered(conn) == count


@pytest.mark.parametrize("listen", [True, False])
async def test_only_a_listening_engine_sets_the_mark(
    conn: asyncpg.Connection,
    db_url: str,
    receiver: Receiver,
    open_policy: None,
    start_engine: StartEngine,
    listen: bool,
) -> None:
    """An idle engine with LISTEN on sets the waiting mark; with LISTEN off it finds work by its
    poll and never sets it, so the app's emits send no NOTIFY."""
    await create_endpoint(conn, receiver.url("/hook"))
    async with listening(db_url) as wakeups:
        await start_engine(listen=listen)
        # Two events, the second emitted once the first is recorded: between them the engine ran
        # out of work, and an idle engine that may set the mark has had the chance to.
        for n in (1, 2):
            await emit_many(conn, "acct_1", 1)
            await wait_until(partial(delivered_all, conn, n), what=f"delivery {n} recorded")
        if listen:
            await wait_until(lambda: mark_stands(conn), what="the engine asleep")
            before = len(await wakeups.drain())
            async with conn.transaction():
                await emit_many(conn, "acct_1", 1)
                assert await mark_stands(conn)
            assert len(await wakeups.drain()) == before + 1
        else:
            assert await conn.fetchval("SELECT waiting_until FROM webhooks.engine_state") is None
            assert await wakeups.drain() == []
