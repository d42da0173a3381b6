"""An EndpointActor's lifecycle: it runs while it has work and ends as soon as it has none, rate
limit or not (the claim schedules a rate-limited endpoint's starts, so nothing of the limit is
left for an actor to wait out). Real attempts over loopback, outcomes through the real
ResultWriter into the in-memory queue."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from engine.delivery.actor import EndpointActor
from engine.models import Delivery, EndpointConfig
from tests.support.delivery_stage import Stage, delivery_stage
from tests.support.memory_queue import endpoint_config
from tests.support.receiver import Reply

# More loop turns than an actor needs to return once its last attempt ended (it returns on the
# turn after the attempt's done callback woke it).
SETTLE_TURNS = 20


@pytest.fixture
async def stage() -> AsyncIterator[Stage]:
    """The delivery stage over the in-memory queue."""
    async with delivery_stage() as s:
        yield s


async def claim_all(stage: Stage, endpoint: EndpointConfig, count: int) -> list[Delivery]:
    """Write ``count`` deliveries for ``endpoint`` and lease them all, as the dispatcher would."""
    stage.queue.add(endpoint, count)
    claimed = await stage.queue.claim({}, default_room=count, max_rows=count)
    return [delivery for delivery, _ in claimed]


async def test_an_actor_keeps_no_per_instance_dict(stage: Stage) -> None:
    """An actor is slotted: the dispatcher holds one per endpoint with work, so each stays small."""
    actor = EndpointActor(endpoint_config(stage.receiver.url("/hook")), stage.deps())
    assert not hasattr(actor, "__dict__")


async def test_run_returns_as_soon_as_the_work_is_done(stage: Stage) -> None:
    """run() returns by itself once everything it was given has an outcome: no idle period, and
    nothing of the actor (no task, no attempt) is left running."""
    endpoint = endpoint_config(stage.receiver.url("/hook"), max_in_flight=3)
    actor = EndpointActor(endpoint, stage.deps())
    for delivery in await claim_all(stage, endpoint, 3):
        actor.offer(delivery)
    await actor.run()
    assert (actor.started, actor.queued, actor.in_flight) == (3, 0, 0)
    await stage.queue.wait_until(lambda q: len(q.recorded) == 3)
    assert [r.outcome for r in stage.queue.recorded] == ["delivered"] * 3


async def test_work_offered_while_running_is_taken_before_it_ends(stage: Stage) -> None:
    """A delivery offered while the actor is busy is sent by the same run, not dropped by it."""
    endpoint = endpoint_config(stage.receiver.url("/hook"), max_in_flight=2)
    first, second = await claim_all(stage, endpoint, 2)
    release = asyncio.Event()
    stage.receiver.script("/hook", Reply(until=release), Reply())
    actor = EndpointActor(endpoint, stage.deps())
    actor.offer(first)
    running = asyncio.get_running_loop().create_task(actor.run())
    await stage.receiver.wait_for(1, path="/hook")
    actor.offer(second)
    release.set()
    await running
    assert actor.started == 2
    assert [r.headers["X-MisarMail-Delivery"] for r in stage.receiver.received] == [
        str(first.id),
        str(second.id),
    ]


@pytest.mark.parametrize("rate_limit_per_s", [None, 0.01])
async def test_an_actor_ends_with_its_last_attempt_rate_limited_or_not(
    stage: Stage, rate_limit_per_s: float | None
) -> None:
    """With or without a rate limit the actor ends with its last attempt: the next start of a
    rate-limited endpoint is the claim's to schedule (a fresh actor keeps to it)."""
    endpoint = endpoint_config(stage.receiver.url("/hook"), rate_limit_per_s=rate_limit_per_s)
    [delivery] = await claim_all(stage, endpoint, 1)
    actor = EndpointActor(endpoint, stage.deps())
    actor.offer(delivery)
    running = asyncio.get_running_loop().create_task(actor.run())
    await stage.queue.wait_until(lambda q: len(q.recorded) == 1)
    await actor.wait_in_flight()
    for _ in range(SETTLE_TURNS):
        await asyncio.sleep(0)
    # The attempt has its outcome and nothing is queued: nothing keeps it running.
    assert running.done()
    await running
    assert actor.started == 1
