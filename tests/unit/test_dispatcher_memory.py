"""What the dispatcher holds follows what it has claimed, not the endpoints a burst touched: a
burst of one delivery to each of many endpoints, against the in-memory queue, real actors and a
real Receiver. Counted in live objects and tasks, never in time or bytes."""

from __future__ import annotations

import asyncio
import gc
from collections.abc import AsyncIterator

import pytest

from engine.delivery.actor import EndpointActor
from engine.delivery.dispatcher import Dispatcher
from tests.support.delivery_stage import Stage, delivery_stage, running
from tests.support.memory_queue import endpoint_config

ENDPOINTS = 300
MAX_OUTSTANDING = 40  # far fewer than ENDPOINTS: the burst must pass through in waves


@pytest.fixture
async def stage() -> AsyncIterator[Stage]:
    """The delivery stage over the in-memory queue."""
    async with delivery_stage() as s:
        yield s


def actor_tasks() -> list[asyncio.Task[object]]:
    """The tasks of actors and their attempts alive in this loop (the dispatcher names each
    actor's task after its endpoint; an attempt runs a coroutine of the actor)."""
    return [
        task
        for task in asyncio.all_tasks()
        if task.get_name().startswith("actor-")
        or task.get_coro().__qualname__.startswith("EndpointActor.")  # type: ignore[union-attr]
    ]


def live_actors() -> int:
    gc.collect()
    return sum(isinstance(o, EndpointActor) for o in gc.get_objects())


async def test_a_burst_over_many_endpoints_leaves_no_actor_task_or_room_behind(
    stage: Stage,
) -> None:
    """One delivery to each of many endpoints: actors alive and the rooms each claim passes never
    exceed what is claimed and unfinished (max_outstanding), and once everything is delivered
    the actors, their tasks and their objects are all gone, back to the count before the burst."""
    tasks_before = len(asyncio.all_tasks())
    actors_before = live_actors()
    for i in range(ENDPOINTS):
        stage.queue.add(endpoint_config(stage.receiver.url(f"/e{i}")))
    dispatcher: Dispatcher | None = None
    peak_actors = 0

    def on_room() -> None:
        nonlocal peak_actors
        assert dispatcher is not None
        peak_actors = max(peak_actors, len(dispatcher.actors))
        dispatcher.wake()

    dispatcher = Dispatcher(
        stage.queue,
        stage.deps(on_room=on_room),
        poll_interval_s=0.05,
        claim_batch=25,
        max_outstanding=MAX_OUTSTANDING,
        shutdown_grace_s=0.0,
        listening=lambda: True,
    )
    async with running(dispatcher):
        await stage.queue.wait_until(
            lambda q: len(q.recorded) == ENDPOINTS and not dispatcher.actors
        )
        assert actor_tasks() == []
        # Besides the receiver's connections, the dispatcher's own loop is the one task added.
        assert len(asyncio.all_tasks()) - len(_receiver_tasks()) == tasks_before + 1
    assert {r.outcome for r in stage.queue.recorded} == {"delivered"}
    assert len({r.path for r in stage.receiver.received}) == ENDPOINTS
    assert 0 < peak_actors <= MAX_OUTSTANDING
    assert max(len(call.rooms) for call in stage.queue.claim_calls) <= MAX_OUTSTANDING
    assert live_actors() == actors_before


def _receiver_tasks() -> list[asyncio.Task[object]]:
    """The test receiver's per-connection handler tasks (aiohttp's server keeps one per open
    keep-alive connection): the stage's, not the engine's."""
    return [
        task
        for task in asyncio.all_tasks()
        if task.get_coro().__qualname__.startswith("RequestHandler.")  # type: ignore[union-attr]
    ]
