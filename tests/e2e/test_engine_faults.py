"""The engine under faults: no LISTEN, a killed listener connection, SIGTERM and SIGKILL."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from pathlib import Path

import asyncpg
import pytest

from engine.delivery import dispatcher as dispatcher_module
from tests.support.engines import RunningEngine, create_endpoint, wait_until
from tests.support.receiver import Receiver, Reply

StartEngine = Callable[..., Awaitable[RunningEngine]]

# The console script installed beside the interpreter running the tests (the venv's bin/).
CLI = Path(sys.executable).with_name("misar-webhooks")
# What every engine subprocess runs with; the database is already migrated by the fixtures.
PROCESS_ENV = {
    "WEBHOOKS_MIGRATE": "false",
    "WEBHOOKS_LOG_FORMAT": "json",
    "WEBHOOKS_POLL_INTERVAL_S": "0.2",
    "WEBHOOKS_REQUEST_TIMEOUT_S": "3",
    "WEBHOOKS_SHUTDOWN_GRACE_S": "5",
    "WEBHOOKS_ADMIN_PORT": "0",  # any free port: engines of parallel test runs must not collide
}
DELIVERED = "SELECT count(*) FROM webhooks.delivery_outcomes WHERE status = 'delivered'"


async def test_without_listen_the_poll_delivers_everything(
    conn: asyncpg.Connection, receiver: Receiver, open_policy: None, start_engine: StartEngine
) -> None:
    """With LISTEN off, the poll delivers the backlog and events emitted while the engine sleeps."""
    await create_endpoint(conn, receiver.url("/a"))
    await create_endpoint(conn, receiver.url("/b"))
    early = await _emit(conn, "acct_1", 10)
    running = await start_engine(listen=False)
    await wait_until(lambda: _count(conn, DELIVERED, 20), what="the backlog delivered")
    # The engine never asks for a NOTIFY it cannot receive: only the poll can find new work.
    assert await conn.fetchval("SELECT waiting_until FROM webhooks.engine_state") is None
    late = await _emit(conn, "acct_1", 10)
    await wait_until(lambda: _count(conn, DELIVERED, 40), what="the late events delivered")

    assert _pairs(receiver) == _expected({"/a", "/b"}, [*early, *late])
    listener = running.engine.listener
    assert listener is not None
    assert (listener.connected, listener.backend_pid) == (False, None)


# Holds the engine's update that sets the waiting mark uncommitted until the test lets it go.
HOLD_WAITING = """
CREATE FUNCTION webhooks.test_hold_waiting() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.waiting_until IS NOT NULL AND OLD.waiting_until IS NULL THEN
        PERFORM pg_advisory_xact_lock(4242);
    END IF;
    RETURN NEW;
END $$;
CREATE TRIGGER test_hold_waiting BEFORE UPDATE ON webhooks.engine_state
    FOR EACH ROW EXECUTE FUNCTION webhooks.test_hold_waiting()"""
WAITING_HELD = """
SELECT count(*) FROM pg_locks
 WHERE locktype = 'advisory' AND objid = 4242 AND NOT granted"""


async def test_event_committed_while_the_engine_falls_asleep_is_not_left_behind(
    conn: asyncpg.Connection,
    db_url: str,
    receiver: Receiver,
    open_policy: None,
    start_engine: StartEngine,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """An event committed after the engine's last empty claim but before its waiting mark
    commits sends no NOTIFY (emit found no mark). The engine asks for the next due time after
    that commit and so finds it: it goes out at once, not at the next poll (an hour here)."""
    await create_endpoint(conn, receiver.url("/a"))
    # Nor at the mark's next refresh, which wakes a sleeping engine too.
    monkeypatch.setattr(dispatcher_module, "WAITING_REFRESH_S", 3600.0)
    await start_engine(poll_interval_s=3600.0)
    await wait_until(
        lambda: _count(
            conn, "SELECT count(*) FROM webhooks.engine_state WHERE waiting_until > now()", 1
        ),
        what="the engine asleep",
    )
    await conn.execute(HOLD_WAITING)
    holder = await asyncpg.connect(db_url)
    try:
        await holder.execute("SELECT pg_advisory_lock(4242)")
        await _emit(conn, "acct_1", 1)  # NOTIFY: the engine wakes, sends, claims nothing more...
        await wait_until(lambda: _count(conn, DELIVERED, 1), what="the first event delivered")
        # ... and its mark now hangs on the lock, uncommitted.
        await wait_until(lambda: _count(conn, WAITING_HELD, 1), what="the waiting mark held")
        assert await conn.fetchval("SELECT waiting_until FROM webhooks.engine_state") is None
        await _emit(conn, "acct_1", 1)  # finds no mark: sends no NOTIFY
        await holder.execute("SELECT pg_advisory_unlock(4242)")
        await wait_until(lambda: _count(conn, DELIVERED, 2), what="the second event delivered")
    finally:
        await holder.close()


async def test_listener_killed_reconnects_and_misses_nothing(
    conn: asyncpg.Connection,
    pg_server_url: str,
    receiver: Receiver,
    open_policy: None,
    start_engine: StartEngine,
) -> None:
    """A killed listener reconnects on a new backend; nothing emitted while it is down is lost."""
    await create_endpoint(conn, receiver.url("/a"))
    await create_endpoint(conn, receiver.url("/b"))
    # A poll this slow cannot hide a lost wake-up: within the test's timeouts only a NOTIFY or the
    # sweep after a reconnect can deliver anything.
    running = await start_engine(poll_interval_s=60.0)
    listener = running.engine.listener
    assert listener is not None
    await wait_until(_holds(lambda: listener.connected), what="the listener connected")
    before = await _emit(conn, "acct_1", 5)
    await wait_until(lambda: _count(conn, DELIVERED, 10), what="delivery woken by NOTIFY")

    old_pid = listener.backend_pid
    assert old_pid is not None
    assert listener.reconnects == 0
    database = await conn.fetchval("SELECT current_database()")
    admin = await asyncpg.connect(pg_server_url)
    try:
        # Refuse new connections to the test database (open ones, the engine's pool and ours,
        # stay), so the listener stays down for as long as the test needs.
        await admin.execute(f'ALTER DATABASE "{database}" ALLOW_CONNECTIONS false')
        assert await conn.fetchval("SELECT pg_terminate_backend($1, 10000)", old_pid)
        await wait_until(_holds(lambda: not listener.connected), what="the listener lost")
        during = await _emit(conn, "acct_1", 5)
        assert not listener.connected, "the events above were committed with no one listening"
    finally:
        await admin.execute(f'ALTER DATABASE "{database}" ALLOW_CONNECTIONS true')
        await admin.close()

    await wait_until(
        _holds(lambda: listener.connected and listener.backend_pid != old_pid),
        what="the listener reconnected",
    )
    await wait_until(lambda: _count(conn, DELIVERED, 20), what="the sweep after the reconnect")
    after = await _emit(conn, "acct_1", 5)
    await wait_until(lambda: _count(conn, DELIVERED, 30), what="delivery woken by NOTIFY again")

    assert _pairs(receiver) == _expected({"/a", "/b"}, [*before, *during, *after])
    assert listener.reconnects == 1, "the reconnect is counted once, refused attempts are not"
    new_pid = listener.backend_pid
    assert await conn.fetchval("SELECT count(*) FROM pg_stat_activity WHERE pid = $1", new_pid) == 1


async def test_sigterm_mid_send_records_every_attempt_and_releases_unstarted_leases(
    db_url: str, conn: asyncpg.Connection, receiver: Receiver, open_policy: None
) -> None:
    """SIGTERM mid-send exits 0 with every attempt recorded and every unstarted lease released."""
    total = 0
    for i in range(3):
        receiver.script(f"/ep{i}", Reply(delay_s=1.0))
        await create_endpoint(conn, receiver.url(f"/ep{i}"), account=f"acct_{i}")
        total += len(await _emit(conn, f"acct_{i}", 50))

    async with _engine_process(db_url) as engine:
        await _requests_arrived(receiver, engine, 10)  # each is answered after 1 s: in flight
        engine.send_signal(signal.SIGTERM)
        code = await asyncio.wait_for(engine.wait(), timeout=30)
    assert code == 0

    sent = _attempts_sent(receiver)
    assert len(sent) == len(receiver.received) >= 10, "every request was a distinct attempt"
    rows = await conn.fetch("SELECT delivery_id, attempt, outcome FROM webhooks.attempts")
    recorded = {(r["delivery_id"], r["attempt"]): r["outcome"] for r in rows}
    assert len(rows) == len(recorded) == len(sent)
    assert recorded == dict.fromkeys(sent, "delivered")
    live = await conn.fetchrow(
        "SELECT count(*) AS n,"
        " count(*) FILTER (WHERE lease_token IS NOT NULL OR due_at > now() OR attempts > 0)"
        " AS held FROM webhooks.deliveries"
    )
    assert live is not None
    assert live["n"] == total - len(sent) > 0, "SIGTERM came before the last delivery"
    assert live["held"] == 0, "unstarted deliveries are due again at once, unleased"


@pytest.mark.slow
async def test_sigkill_mid_burst_then_restart_delivers_all_duplicating_only_leased(
    db_url: str, conn: asyncpg.Connection, receiver: Receiver, open_policy: None
) -> None:
    """After SIGKILL mid-burst a restart delivers all; only deliveries leased at the kill repeat."""
    # A short lease so the killed engine's deliveries are due again soon. The actor starts an
    # attempt only while the lease outlives the request timeout (3 s) by LEASE_MARGIN_S (5 s).
    await conn.execute(
        "UPDATE webhooks.settings SET request_timeout_s = 3, lease_duration = '10 seconds'"
    )
    paths = [f"/ep{i}" for i in range(5)]
    events: dict[str, list[int]] = {}
    for i, path in enumerate(paths):
        receiver.script(path, Reply(delay_s=0.05))
        await create_endpoint(conn, receiver.url(path), account=f"acct_{i}")
        events[path] = await _emit(conn, f"acct_{i}", 100)
    total = sum(len(ids) for ids in events.values())

    async with _engine_process(db_url) as first:
        await _requests_arrived(receiver, first, 100)
        first.kill()
        await first.wait()
    await wait_until(lambda: _alone(conn), what="the killed engine's sessions gone")
    leased_at_kill = {
        r["id"]
        for r in await conn.fetch(
            "SELECT id FROM webhooks.deliveries WHERE lease_token IS NOT NULL"
        )
    }
    assert await conn.fetchval(DELIVERED) < total, "SIGKILL came before the last delivery"

    async with _engine_process(db_url) as second:
        await wait_until(
            lambda: _count(conn, DELIVERED, total), timeout_s=60, what="every delivery done"
        )
        second.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(second.wait(), timeout=30) == 0

    expected = {(path, f"evt_{i}") for path, ids in events.items() for i in ids}
    assert _pairs(receiver).keys() == expected, "every event reached its endpoint at least once"
    per_delivery = Counter(int(r.headers["X-MisarMail-Delivery"]) for r in receiver.received)
    repeated = {delivery_id for delivery_id, n in per_delivery.items() if n > 1}
    assert repeated <= leased_at_kill, "only deliveries leased at the kill are sent again"

    assert await conn.fetchval("SELECT count(*) FROM webhooks.deliveries") == 0
    outcomes = await conn.fetch(
        "SELECT o.delivery_id, o.status, o.attempts, a.attempt, a.n_delivered"
        " FROM webhooks.delivery_outcomes o LEFT JOIN LATERAL ("
        "   SELECT max(x.attempt) FILTER (WHERE x.outcome = 'delivered') AS attempt,"
        "          count(*) FILTER (WHERE x.outcome = 'delivered') AS n_delivered"
        "     FROM webhooks.attempts x WHERE x.delivery_id = o.delivery_id) a ON true"
    )
    assert len(outcomes) == len({r["delivery_id"] for r in outcomes}) == total
    assert all(r["status"] == "delivered" and r["n_delivered"] == 1 for r in outcomes)
    assert all(r["attempts"] == r["attempt"] for r in outcomes), "the outcome names its attempt"
    sent = _attempts_sent(receiver)
    assert {(r["delivery_id"], r["attempt"]) for r in outcomes} <= sent


@contextlib.asynccontextmanager
async def _engine_process(db_url: str) -> AsyncIterator[asyncio.subprocess.Process]:
    """``misar-webhooks run`` on ``db_url`` as a real process; killed at exit if still running.

    Its log goes to this process's stderr, which pytest captures and shows for a failed test.
    """
    env = {k: v for k, v in os.environ.items() if not k.startswith("WEBHOOKS_")}
    env.update(PROCESS_ENV, WEBHOOKS_DATABASE_URL=db_url)
    process = await asyncio.create_subprocess_exec(
        str(CLI), "run", env=env, stdin=asyncio.subprocess.DEVNULL
    )
    try:
        yield process
    finally:
        if process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                process.kill()
        await process.wait()


async def _requests_arrived(
    receiver: Receiver, engine: asyncio.subprocess.Process, count: int
) -> None:
    """Wait for ``count`` requests; fail at once, with the exit code, if the engine exits first."""
    arrived = asyncio.ensure_future(receiver.wait_for(count, timeout_s=30))
    exited = asyncio.ensure_future(engine.wait())
    await asyncio.wait([arrived, exited], return_when=asyncio.FIRST_COMPLETED)
    if not arrived.done():
        arrived.cancel()
        raise AssertionError(f"the engine exited with {exited.result()} before {count} requests")
    exited.cancel()
    await arrived


async def _emit(conn: asyncpg.Connection, account: str, n: int) -> list[int]:
    """Emit ``n`` events for ``account`` in one transaction; returns their ids."""
    rows = await conn.fetch(
        "SELECT webhooks.emit($1, 'email.sent', jsonb_build_object('n', n)) AS id"
        " FROM generate_series(1, $2::integer) AS n",
        account,
        n,
    )
    return [r["id"] for r in rows]


async def _count(conn: asyncpg.Connection, sql: str, n: int) -> bool:
    return int(await conn.fetchval(sql)) >= n


async def _alone(conn: asyncpg.Connection) -> bool:
    """True once ``conn`` is the only client session on its database."""
    others = await conn.fetchval(
        "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
        " AND backend_type = 'client backend' AND pid <> pg_backend_pid()"
    )
    return bool(others == 0)


def _holds(condition: Callable[[], bool]) -> Callable[[], Awaitable[bool]]:
    """A wait_until predicate for a condition on in-process engine state."""

    async def check() -> bool:
        return condition()

    return check


def _pairs(receiver: Receiver) -> Counter[tuple[str, str]]:
    """How often each (endpoint path, webhook-id) pair, i.e. each event per endpoint, arrived."""
    return Counter((r.path, r.headers["webhook-id"]) for r in receiver.received)


def _expected(paths: Iterable[str], event_ids: Iterable[int]) -> Counter[tuple[str, str]]:
    """Every event once at every path."""
    ids = list(event_ids)
    return Counter({(path, f"evt_{event_id}"): 1 for path in paths for event_id in ids})


def _attempts_sent(receiver: Receiver) -> set[tuple[int, int]]:
    """The (delivery id, attempt number) of every request the receiver saw."""
    return {
        (int(r.headers["X-MisarMail-Delivery"]), int(r.headers["X-MisarMail-Attempt"]))
        for r in receiver.received
    }
