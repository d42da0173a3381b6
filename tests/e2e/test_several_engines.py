"""Several engines on one database, each a real process: an endpoint's max_in_flight and
rate_limit_per_s hold across them together, a SIGKILLed engine's endpoints are served by the others
once its leases run out, and a SIGTERMed engine hands its unstarted deliveries over at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import statistics
from collections.abc import AsyncIterator

import asyncpg
import pytest

from tests.support.engines import create_endpoint, wait_until
from tests.support.load import (
    Load,
    account_of,
    add_events,
    all_delivered,
    check_delivered_once,
    delivered,
    delivered_at_least,
    emit_many,
    leased,
    make_load,
    no_session_of,
)
from tests.support.processes import EngineProcess, engine_process
from tests.support.receiver import Receiver, Reply

# A killed engine's leases keep its deliveries from the others until they run out: short here, as
# long as an attempt needs (the request timeout, set to 3 s with it, plus the actor's 5 s margin).
SHORT_LEASE = "10 seconds"


@contextlib.asynccontextmanager
async def engines(
    db_url: str, count: int, name: str = "engine", env: dict[str, str] | None = None
) -> AsyncIterator[list[EngineProcess]]:
    """``count`` engine processes on ``db_url``, started one after the other; the sessions of
    the i-th carry the application_name ``<name>_<i>`` (asyncpg passes the URL's parameter on)."""
    async with contextlib.AsyncExitStack() as stack:
        started = []
        for i in range(count):
            separator = "&" if "?" in db_url else "?"
            url = f"{db_url}{separator}application_name={name}_{i}"
            engine = await stack.enter_async_context(engine_process(url, env))
            await engine.logged("engine_started")
            started.append(engine)
        yield started


@pytest.mark.parametrize("max_in_flight", [1, 2])
async def test_max_in_flight_holds_across_three_engines(
    db_url: str,
    conn: asyncpg.Connection,
    receiver: Receiver,
    open_policy: None,
    max_in_flight: int,
) -> None:
    """Three engines share a burst to 20 endpoints: no endpoint ever sees more than its
    max_in_flight requests at once, each limit is reached, and every event is delivered once."""
    load = await make_load(
        conn,
        receiver,
        endpoints=20,
        events_per_endpoint=0,
        reply=Reply(delay_s=0.05),
        max_in_flight=max_in_flight,
    )
    async with engines(db_url, 3) as running:
        load = await add_events(conn, load, 30)  # once all three run
        await wait_until(
            lambda: all_delivered(conn, load), timeout_s=120, what="every delivery done"
        )
        for engine in running:
            await engine.stop()
    history = await check_delivered_once(conn, receiver, load)
    assert history.duplicates == 0
    _assert_concurrency(receiver, load, max_in_flight)


async def test_killed_engines_endpoints_are_served_by_the_others_after_its_leases(
    db_url: str, conn: asyncpg.Connection, receiver: Receiver, open_policy: None
) -> None:
    """An engine SIGKILLed mid-burst while it holds every endpoint's max_in_flight (2) in
    hanging requests: two other engines, started while its leases run, send none of its
    deliveries before their lease ends, then deliver the whole burst; no endpoint ever sees more
    than 2 requests at once, and only the deliveries it had in flight are sent twice."""
    await conn.execute(
        f"UPDATE webhooks.settings SET request_timeout_s = 3, lease_duration = '{SHORT_LEASE}'"
    )
    hang = asyncio.Event()  # never set: the kill cuts these requests
    load = await make_load(conn, receiver, endpoints=20, events_per_endpoint=0, max_in_flight=2)
    for path in load.paths:
        receiver.script(path, Reply(until=hang), Reply(until=hang), Reply(delay_s=0.05))
    async with engines(db_url, 1, "victim") as [victim]:
        load = await add_events(conn, load, 30)
        await receiver.wait_for(40, timeout_s=60)
        # Killed at once, so that no hanging request reaches its timeout and gives its lease up
        # (starting the others first once took longer than that timeout).
        victim.kill()
        assert await victim.wait() == -signal.SIGKILL
    # A statement the dead engine sent may still commit: read the leases once it is gone.
    await wait_until(lambda: no_session_of(conn, "victim_0"), what="the killed engine's sessions")
    leases = await conn.fetch(
        "SELECT id, due_at AS lease_ends FROM webhooks.deliveries WHERE lease_token IS NOT NULL"
    )
    in_flight_at_kill = {r["id"] for r in leases}
    assert len(in_flight_at_kill) == 40, "the victim held every endpoint's limit"
    assert await delivered(conn) == 0
    async with engines(db_url, 2, "other") as others:
        await wait_until(
            lambda: all_delivered(conn, load), timeout_s=120, what="every delivery done"
        )
        for engine in others:
            await engine.stop()
    early = await conn.fetch(
        "SELECT a.delivery_id, a.started_at, l.lease_ends FROM webhooks.attempts a"
        "  JOIN unnest($1::bigint[], $2::timestamptz[]) AS l(id, lease_ends)"
        "    ON a.delivery_id = l.id"
        " WHERE a.started_at < l.lease_ends",
        [r["id"] for r in leases],
        [r["lease_ends"] for r in leases],
    )
    assert early == [], "the others sent a killed engine's delivery before its lease ended"
    history = await check_delivered_once(conn, receiver, load, may_repeat=in_flight_at_kill)
    assert history.repeated == in_flight_at_kill
    _assert_concurrency(receiver, load, 2)


def _assert_concurrency(receiver: Receiver, load: Load, max_in_flight: int) -> None:
    """No endpoint saw more than max_in_flight requests at once, and some saw that many."""
    most = {path: receiver.max_concurrency(path) for path in load.paths}
    assert max(most.values()) == max_in_flight, most
    assert max(r.concurrency for r in receiver.received) == max_in_flight


async def test_rate_limit_holds_across_engines(
    db_url: str, conn: asyncpg.Connection, receiver: Receiver, open_policy: None
) -> None:
    """Three engines keep each endpoint's rate_limit_per_s together, within 10 %, and come close
    to it: one endpoint at 10 requests/s and one at 20, measured on the receiver's arrivals."""
    rates = {"/rate10": 10.0, "/rate20": 20.0}
    seconds = 5
    for path, rate in rates.items():
        await create_endpoint(
            conn, receiver.url(path), account=account_of(path), rate_limit_per_s=rate
        )
    async with engines(db_url, 3) as running:
        for path, rate in rates.items():
            await emit_many(conn, account_of(path), int(rate * seconds))
        for path, rate in rates.items():
            await receiver.wait_for(int(rate * seconds), path=path, timeout_s=60)
        for engine in running:
            await engine.stop()
    for path, rate in rates.items():
        arrivals = [r.arrived_at for r in receiver.received_on(path)]
        measured = 1 / _slope(arrivals)
        print(f"{path}: {measured:.2f} requests/s for a limit of {rate:g}")
        assert measured <= rate * 1.1, f"{path}: {measured:.2f}/s over a limit of {rate:g}/s"
        assert measured >= rate * 0.75, f"{path}: {measured:.2f}/s, far under {rate:g}/s"
    assert await delivered(conn) == sum(int(rate * seconds) for rate in rates.values())


async def test_sigterm_hands_unstarted_deliveries_to_another_engine_at_once(
    db_url: str, conn: asyncpg.Connection, receiver: Receiver, open_policy: None
) -> None:
    """An engine stopped by SIGTERM gives back the deliveries it leased but had not started (here
    waiting for its only connection slot), and another engine sends them while the first one's
    attempt is still in flight: it does not wait for the lease (an hour) to run out."""
    await conn.execute("UPDATE webhooks.settings SET lease_duration = '1 hour'")
    release = asyncio.Event()
    receiver.script("/slow", Reply(until=release), Reply())
    await create_endpoint(conn, receiver.url("/slow"), account="acct_slow", max_in_flight=4)
    load = Load({"/slow": await emit_many(conn, "acct_slow", 4)})
    one_slot = {"WEBHOOKS_MAX_CONNECTIONS": "1"}
    async with engines(db_url, 1, "first", one_slot) as [first]:
        await receiver.wait_for(1, path="/slow", timeout_s=60)
        await wait_until(lambda: _leased_count(conn, 4), what="all four leased by the first")
        held = await conn.fetch("SELECT id, lease_token FROM webhooks.deliveries")
        async with engines(db_url, 1, "second") as [second]:
            first.signal(signal.SIGTERM)
            # The second engine delivers the other three while the first one's attempt hangs.
            await wait_until(lambda: delivered_at_least(conn, 3), what="three delivered")
            assert first.process.returncode is None
            still = await conn.fetchval(
                "SELECT count(*) FROM webhooks.deliveries d"
                "  JOIN unnest($1::bigint[], $2::uuid[]) AS h(id, lease)"
                "    ON d.id = h.id AND d.lease_token = h.lease",
                [r["id"] for r in held],
                [r["lease_token"] for r in held],
            )
            assert still == 1, "only the attempt in flight is still under the first's lease"
            release.set()
            assert await first.wait() == 0
            await wait_until(
                lambda: all_delivered(conn, load), timeout_s=60, what="every delivery done"
            )
            await second.stop()
    history = await check_delivered_once(conn, receiver, load)
    assert history.duplicates == 0
    released = [e for e in first.events() if e.get("event") == "leases_released"]
    assert [e["count"] for e in released] == [3]


def _slope(arrivals: list[float]) -> float:
    """Seconds per request: the least-squares slope of arrival time over arrival order, which a
    late or early single arrival (a loaded machine) moves far less than the first and last do."""
    xs = list(range(len(arrivals)))
    return statistics.linear_regression(xs, arrivals).slope


async def _leased_count(conn: asyncpg.Connection, count: int) -> bool:
    return len(await leased(conn)) == count
