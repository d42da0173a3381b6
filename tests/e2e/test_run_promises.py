"""Promises of ``misar-webhooks run`` that only a real process shows: a second signal exits at once
while attempts are still draining, a shutdown grace shorter than the request timeout is refused at
start, and a running engine's periodic maintenance drops partitions past retention.
"""

from __future__ import annotations

import asyncio
import signal
from datetime import timedelta

import asyncpg
import pytest

from tests.support.engines import create_endpoint, wait_until
from tests.support.load import emit_many
from tests.support.processes import CLI, engine_process
from tests.support.receiver import Receiver, Reply

# Far longer than any test runs: an engine that waited for its drain would never exit on its own.
HOLD_S = "600"


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
async def test_second_signal_exits_at_once_while_attempts_drain(
    db_url: str,
    conn: asyncpg.Connection,
    receiver: Receiver,
    open_policy: None,
    signum: signal.Signals,
) -> None:
    """After a first SIGTERM (or SIGINT) the engine drains its in-flight attempts, which the
    receiver holds and the 600 s timeout and grace would let run; a second signal ends the
    process at once, with 128 + the signal's number, the held requests still unanswered."""
    # An attempt starts only while its lease outlives the request timeout.
    await conn.execute("UPDATE webhooks.settings SET lease_duration = '20 minutes'")
    release = asyncio.Event()
    receiver.script("/held", Reply(until=release))
    await create_endpoint(conn, receiver.url("/held"))
    await emit_many(conn, "acct_1", 3)
    env = {"WEBHOOKS_REQUEST_TIMEOUT_S": HOLD_S, "WEBHOOKS_SHUTDOWN_GRACE_S": HOLD_S}
    try:
        async with engine_process(db_url, env) as engine:
            await receiver.wait_for(3, "/held", timeout_s=60)
            engine.signal(signum)
            await engine.logged("shutdown_requested")
            assert engine.process.returncode is None, "the first signal must drain, not exit"
            engine.signal(signum)
            assert await engine.wait() == 128 + signum
    finally:
        release.set()
    assert len(receiver.received_on("/held")) == 3
    assert await conn.fetchval("SELECT count(*) FROM webhooks.attempts") == 0


@pytest.mark.parametrize(
    ("grace_s", "refused"), [("2.9", True), ("3", False)], ids=["shorter", "equal"]
)
async def test_shutdown_grace_shorter_than_the_request_timeout_is_refused(
    grace_s: str, refused: bool
) -> None:
    """With a 3 s request timeout, a 2.9 s shutdown grace is refused when configured (exit 2,
    one line naming both variables) and a 3 s one is accepted."""
    env = {"WEBHOOKS_REQUEST_TIMEOUT_S": "3", "WEBHOOKS_SHUTDOWN_GRACE_S": grace_s}
    process = await asyncio.create_subprocess_exec(
        str(CLI),
        "check-config",
        env={"PATH": "/usr/bin:/bin", **env},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await process.communicate()
    if refused:
        assert process.returncode == 2, (out, err)
        [line] = err.decode().splitlines()
        assert "WEBHOOKS_SHUTDOWN_GRACE_S (2.9) must be at least WEBHOOKS_REQUEST_TIMEOUT_S" in line
    else:
        assert (process.returncode, err) == (0, b"")
        assert b'"shutdown_grace_s": 3.0' in out


async def test_running_engine_drops_partitions_past_retention(
    db_url: str, conn: asyncpg.Connection
) -> None:
    """An engine whose maintenance runs every 0.2 s drops, while it runs, the events partition of
    5 days ago once retention is shortened to 4 days, and keeps that of 3 days ago."""
    today = await conn.fetchval("SELECT (now() AT TIME ZONE 'UTC')::date")
    names = {}
    for ago in (5, 3):
        day = today - timedelta(days=ago)
        names[ago] = f"events_p{day:%Y%m%d}"
        await conn.execute(
            f"CREATE TABLE webhooks.{names[ago]} PARTITION OF webhooks.events FOR VALUES"
            f" FROM ('{day} 00:00+00') TO ('{day + timedelta(days=1)} 00:00+00')"
        )

    async def exists(name: str) -> bool:
        return bool(await conn.fetchval("SELECT to_regclass($1) IS NOT NULL", f"webhooks.{name}"))

    async def past_one_gone() -> bool:
        return not await exists(names[5])

    env = {"WEBHOOKS_MAINTENANCE_INTERVAL_S": "0.2"}
    async with engine_process(db_url, env) as engine:
        await engine.logged("engine_started")
        await conn.execute("UPDATE webhooks.settings SET retention = '4 days'")
        await wait_until(past_one_gone, timeout_s=60, what="the partition past retention dropped")
        assert await exists(names[3]), "the partition within retention was kept"
        engine.signal(signal.SIGTERM)
        assert await engine.wait() == 0
    dropped = [e["dropped"] for e in engine.events() if e.get("event") == "partitions_maintained"]
    assert [names[5]] in dropped
