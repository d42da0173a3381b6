"""Per-endpoint ordering, concurrency and rate limits, isolation between endpoints, the global
bound on claimed work, SSRF guard.

Every test runs inside the loopback fence: the SSRF test names 10.0.0.1 and 169.254.169.254, which
a regressed guard must not be able to reach.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Awaitable, Callable

import asyncpg
import pytest

from tests.support.engines import RunningEngine, create_endpoint, wait_until
from tests.support.load import delivered_at_least
from tests.support.receiver import Receiver, Reply

StartEngine = Callable[..., Awaitable[RunningEngine]]

pytestmark = pytest.mark.usefixtures("loopback_fence")


def _event_ids(receiver: Receiver, path: str) -> list[str]:
    return [json.loads(r.body)["id"] for r in receiver.received_on(path)]


async def _emit(conn: asyncpg.Connection, n: int, account: str = "acct_1") -> list[int]:
    rows = await conn.fetch(
        "SELECT webhooks.emit($1, 'email.sent', jsonb_build_object('i', g)) AS id"
        " FROM generate_series(1, $2) g",
        account,
        n,
    )
    return [r["id"] for r in rows]


async def test_dispatch_ordering_starts_attempts_in_event_order(
    conn: asyncpg.Connection, receiver: Receiver, open_policy: None, start_engine: StartEngine
) -> None:
    """Under 'dispatch' with several in flight, attempts start in event order."""
    receiver.script("/d", Reply(delay_s=0.05))
    await create_endpoint(conn, receiver.url("/d"), max_in_flight=4)
    await start_engine()
    await _emit(conn, 40)
    await receiver.wait_for(40, "/d")
    await wait_until(lambda: delivered_at_least(conn, 40), what="40 delivered")
    rows = await conn.fetch("SELECT event_id FROM webhooks.attempts ORDER BY started_at, id")
    started = [r["event_id"] for r in rows]
    assert started == sorted(started)


async def test_strict_ordering_holds_later_deliveries_behind_a_failing_one(
    conn: asyncpg.Connection, receiver: Receiver, open_policy: None, start_engine: StartEngine
) -> None:
    """Under 'strict' a failing delivery is retried until it succeeds before later ones go."""
    receiver.script("/s", Reply(status=500), Reply(status=500), Reply(status=200))
    await create_endpoint(conn, receiver.url("/s"), ordering="strict")
    await start_engine()
    ids = await _emit(conn, 3)
    await receiver.wait_for(5, "/s", timeout_s=20)
    first, second, third = (f"evt_{i}" for i in ids)
    assert _event_ids(receiver, "/s") == [first, first, first, second, third]
    assert receiver.max_concurrency("/s") == 1


async def test_max_in_flight_is_never_exceeded(
    conn: asyncpg.Connection, receiver: Receiver, open_policy: None, start_engine: StartEngine
) -> None:
    """An endpoint with max_in_flight 3 never sees more than 3 concurrent requests."""
    receiver.script("/c", Reply(delay_s=0.2))
    await create_endpoint(conn, receiver.url("/c"), max_in_flight=3)
    await start_engine()
    await _emit(conn, 24)
    await receiver.wait_for(24, "/c", timeout_s=30)
    assert receiver.max_concurrency("/c") == 3


async def test_rate_limit_spaces_requests(
    conn: asyncpg.Connection, receiver: Receiver, open_policy: None, start_engine: StartEngine
) -> None:
    """An endpoint limited to 5 requests/s gets its 12th request no sooner than 11/5 s after the
    events were emitted (the first goes at once, each next 1/5 s after the one before), however
    the machine's load delays or bunches the arrivals."""
    await create_endpoint(conn, receiver.url("/r"), rate_limit_per_s=5.0)
    await start_engine()
    emitted_at = time.monotonic()
    await _emit(conn, 12)
    got = await receiver.wait_for(12, "/r", timeout_s=60)
    span = got[-1].arrived_at - emitted_at
    assert span >= 11 / 5, f"12 requests within {span:.3f} s under a 5/s limit"


async def test_slow_endpoint_does_not_slow_the_others(
    conn: asyncpg.Connection, receiver: Receiver, open_policy: None, start_engine: StartEngine
) -> None:
    """While one endpoint holds its only request in flight, another's 60 events are all
    delivered, and the held endpoint got nothing more meanwhile (its max_in_flight is 1)."""
    release = asyncio.Event()
    receiver.script("/slow", Reply(until=release))
    await create_endpoint(conn, receiver.url("/slow"), account="slow", max_in_flight=1)
    await create_endpoint(conn, receiver.url("/fast"), account="fast")
    # Held requests must not time out while the test runs: the longest timeout there is.
    await conn.execute("UPDATE webhooks.settings SET request_timeout_s = 30")
    await start_engine(request_timeout_s=100.0, shutdown_grace_s=100.0)
    await _emit(conn, 5, account="slow")
    await _emit(conn, 60, account="fast")
    await receiver.wait_for(60, "/fast", timeout_s=60)
    await wait_until(lambda: delivered_at_least(conn, 60), timeout_s=60, what="60 delivered")
    assert len(receiver.received_on("/slow")) == 1, "the held request was not the only one"
    assert await _leased(conn, "slow") >= 1, "the slow endpoint's attempt is still in flight"
    release.set()
    await receiver.wait_for(5, "/slow", timeout_s=60)


async def test_ssrf_guard_refuses_non_public_addresses(
    conn: asyncpg.Connection, receiver: Receiver, start_engine: StartEngine
) -> None:
    """With the guard on, loopback, private, link-local and mapped addresses are refused."""
    await conn.execute("UPDATE webhooks.settings SET allow_http = true")
    port = receiver.port
    urls = [
        f"http://127.0.0.1:{port}/a",
        "http://10.0.0.1/b",
        "http://169.254.169.254/latest/meta-data",
        f"http://[::1]:{port}/c",
        f"http://[::ffff:127.0.0.1]:{port}/d",
        f"http://localhost:{port}/e",
    ]
    for i, url in enumerate(urls):
        await create_endpoint(conn, url, account=f"a{i}")
        await conn.execute("SELECT webhooks.emit($1, 'email.sent', '{}')", f"a{i}")
    await start_engine()
    await wait_until(lambda: _attempts(conn, len(urls)), what="one refused attempt per endpoint")
    rows = await conn.fetch(
        "SELECT e.url, a.error_kind, a.error_message FROM webhooks.attempts a"
        " JOIN webhooks.endpoints e ON e.id = a.endpoint_id"
    )
    assert {r["url"] for r in rows} == set(urls)
    assert {r["error_kind"] for r in rows} == {"blocked_address"}
    assert all(r["error_message"] for r in rows)
    assert receiver.received == []


async def _leased(conn: asyncpg.Connection, account: str | None = None) -> int:
    """Deliveries claimed and not yet finished (of ``account``'s endpoints, or all)."""
    return int(
        await conn.fetchval(
            "SELECT count(*) FROM webhooks.deliveries d JOIN webhooks.endpoints e"
            " ON e.id = d.endpoint_id WHERE d.lease_token IS NOT NULL"
            " AND ($1::text IS NULL OR e.account_id = $1)",
            account,
        )
    )


async def _attempts(conn: asyncpg.Connection, n: int) -> bool:
    return int(await conn.fetchval("SELECT count(*) FROM webhooks.attempts")) >= n


async def test_attempts_in_flight_are_capped_across_endpoints(
    conn: asyncpg.Connection, receiver: Receiver, open_policy: None, start_engine: StartEngine
) -> None:
    """With max_connections 4, three endpoints allowed 8 each never have more than 4 in flight."""
    receiver.script("/g0", Reply(delay_s=0.2))
    receiver.script("/g1", Reply(delay_s=0.2))
    receiver.script("/g2", Reply(delay_s=0.2))
    for i in range(3):
        await create_endpoint(conn, receiver.url(f"/g{i}"), account=f"g{i}")
    await start_engine(max_connections=4)
    for i in range(3):
        await _emit(conn, 12, account=f"g{i}")
    await receiver.wait_for(36, timeout_s=30)
    assert receiver.max_concurrency() == 4


@pytest.mark.parametrize(("max_connections", "queue_per_in_flight"), [(3, 2), (2, 5)])
async def test_claimed_work_is_capped_across_all_endpoints(
    db_url: str,
    conn: asyncpg.Connection,
    receiver: Receiver,
    open_policy: None,
    start_engine: StartEngine,
    max_connections: int,
    queue_per_in_flight: int,
) -> None:
    """Across five endpoints with room for 8 in flight each, the deliveries leased (claimed and
    unfinished, as the database shows) reach max_connections x queue_per_in_flight while the
    receiver holds every request, with max_connections requests in flight, and never exceed it
    meanwhile. (After the release, results waiting in the writer keep their rows leased a while
    longer; those are no actor's work, so the cap is observed while requests are held.)"""
    cap = max_connections * queue_per_in_flight
    release = asyncio.Event()
    for i in range(5):
        receiver.script(f"/q{i}", Reply(until=release))
        await create_endpoint(conn, receiver.url(f"/q{i}"), account=f"q{i}")
    await conn.execute("UPDATE webhooks.settings SET request_timeout_s = 30")
    await start_engine(
        max_connections=max_connections,
        queue_per_in_flight=queue_per_in_flight,
        request_timeout_s=100.0,
        shutdown_grace_s=100.0,
    )
    sampler = await asyncpg.connect(db_url)
    peak = 0
    sampling = True

    async def sample() -> None:
        nonlocal peak
        while sampling:
            peak = max(peak, await _leased(sampler))
            await asyncio.sleep(0.01)

    sampler_task = asyncio.ensure_future(sample())
    try:
        for i in range(5):
            await _emit(conn, 20, account=f"q{i}")
        await receiver.wait_for(max_connections, timeout_s=60)
        await wait_until(lambda: _leased_is(conn, cap), timeout_s=60, what=f"{cap} leased")
        assert len(receiver.received) == max_connections
        assert await _leased(conn) == cap, "the engine holds the cap while every request is held"
    finally:
        sampling = False
        await sampler_task
        await sampler.close()
        release.set()
    # The sampler watches for going over between the emits and the release. Reaching the cap is
    # asserted above on the test's own connection: on PG15 the sampler sometimes read nothing
    # but zeros in a loaded run, although the cap stood for seconds.
    assert peak <= cap, f"{peak} leased at the peak, the cap is {cap}"
    await wait_until(lambda: delivered_at_least(conn, 100), timeout_s=60, what="100 delivered")


async def _leased_is(conn: asyncpg.Connection, n: int) -> bool:
    return await _leased(conn) == n
