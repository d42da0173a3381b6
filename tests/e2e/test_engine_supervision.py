"""Actor supervision: crashes are contained and restarted; actors without work are reaped."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import asyncpg
import pytest

from engine.delivery.actor import EndpointActor
from tests.support.engines import RunningEngine, create_endpoint, delivery_counts, wait_until
from tests.support.receiver import Receiver

StartEngine = Callable[..., Awaitable[RunningEngine]]


async def test_crashing_actor_is_restarted_without_touching_others(
    conn: asyncpg.Connection,
    receiver: Receiver,
    open_policy: None,
    start_engine: StartEngine,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """An actor whose loop raises is restarted and delivers; other endpoints never notice."""
    crashed: list[str] = []
    original_run = EndpointActor.run

    async def run_crashing_once(self: EndpointActor) -> None:
        if self.config.url.endswith("/crashy") and not crashed:
            crashed.append(self.endpoint_id)
            raise RuntimeError("actor bug")
        await original_run(self)

    monkeypatch.setattr(EndpointActor, "run", run_crashing_once)
    await create_endpoint(conn, receiver.url("/crashy"), account="a")
    await create_endpoint(conn, receiver.url("/calm"), account="b")
    running = await start_engine()
    await conn.execute("SELECT webhooks.emit('a', 'email.sent', '{}')")
    await conn.execute("SELECT webhooks.emit('b', 'email.sent', '{}')")
    await receiver.wait_for(1, "/calm")
    await receiver.wait_for(1, "/crashy")
    assert crashed, "the injected crash did not happen"
    assert running.engine.dispatcher is not None
    assert running.engine.dispatcher.crashes == 1
    await wait_until(lambda: _delivered(conn, 2), what="both delivered")


async def test_corrupt_secret_is_recorded_as_an_internal_failure_and_retried(
    conn: asyncpg.Connection, receiver: Receiver, open_policy: None, start_engine: StartEngine
) -> None:
    """A delivery that cannot even be signed is recorded as failed (not lost) and retried."""
    endpoint_id, _ = await create_endpoint(conn, receiver.url("/x"))
    await conn.execute(
        "UPDATE webhooks.endpoints SET secret = 'not-a-secret' WHERE id = $1", endpoint_id
    )
    await start_engine()
    await conn.execute("SELECT webhooks.emit('acct_1', 'email.sent', '{}')")
    await wait_until(
        lambda: _attempts(conn, "internal", 2), what="two internal-failure attempts recorded"
    )
    assert receiver.received == []
    statuses = await conn.fetch("SELECT status FROM webhooks.delivery_log")
    assert len(statuses) == 1
    assert statuses[0]["status"] != "delivered"


async def test_idle_actors_are_reaped(
    conn: asyncpg.Connection, receiver: Receiver, open_policy: None, start_engine: StartEngine
) -> None:
    """Once its work is done, an endpoint's actor is gone."""
    for i in range(5):
        await create_endpoint(conn, receiver.url(f"/e{i}"), account=f"acct_{i}")
    running = await start_engine()
    for i in range(5):
        await conn.execute("SELECT webhooks.emit($1, 'email.sent', '{}')", f"acct_{i}")
    await receiver.wait_for(5)
    dispatcher = running.engine.dispatcher
    assert dispatcher is not None

    async def reaped() -> bool:
        return not dispatcher.actors

    await wait_until(reaped, timeout_s=10, what="actors reaped")


async def _delivered(conn: asyncpg.Connection, n: int) -> bool:
    return (await delivery_counts(conn)).get("delivered", 0) >= n


async def _attempts(conn: asyncpg.Connection, kind: str, n: int) -> bool:
    count = await conn.fetchval(
        "SELECT count(*) FROM webhooks.attempts WHERE error_kind = $1", kind
    )
    return int(count) >= n
