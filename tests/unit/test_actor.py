"""EndpointActor against a real Sender and Receiver over loopback, its outcomes going through the
real ResultWriter into the in-memory queue: in-flight limits, ordering, rate limit, lease margin,
shutdown, and the Outcome each attempt leaves."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import AsyncIterator
from datetime import datetime

import pytest

from engine.delivery.actor import LEASE_MARGIN_S, EndpointActor
from engine.models import Delivery, EndpointConfig, ErrorKind, Ordering
from engine.signing import verify_signature
from tests.support.delivery_stage import REQUEST_TIMEOUT_S, Stage, delivery_stage
from tests.support.memory_queue import endpoint_config
from tests.support.receiver import Reply

HANG = Reply(delay_s=3600)  # answers only when the attempt is cancelled


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


async def stop_actor(actor: EndpointActor, running: asyncio.Task[None]) -> list[Delivery]:
    """Shut the actor down as the dispatcher does: unstarted back, in-flight cancelled."""
    unstarted = actor.stop()
    actor.cancel_in_flight()
    await actor.wait_in_flight()
    await running
    return unstarted


@pytest.mark.parametrize(
    ("ordering", "max_in_flight", "expected"),
    [(Ordering.DISPATCH, 1, 1), (Ordering.DISPATCH, 3, 3), (Ordering.STRICT, 3, 1)],
)
async def test_actor_keeps_max_in_flight_and_strict_keeps_one(
    stage: Stage, ordering: Ordering, max_in_flight: int, expected: int
) -> None:
    """With receivers that never answer, exactly max_in_flight attempts start (1 when strict)."""
    stage.receiver.script("/hook", HANG)
    endpoint = endpoint_config(stage.receiver.url("/hook"), max_in_flight=max_in_flight)
    # The queue leases them all (a claim keeps the endpoint's limit; here the actor alone must).
    deliveries = await claim_all(stage, dataclasses.replace(endpoint, max_in_flight=5), 5)
    actor = EndpointActor(dataclasses.replace(endpoint, ordering=ordering), stage.deps())
    for delivery in deliveries:
        actor.offer(delivery)
    running = asyncio.get_running_loop().create_task(actor.run())
    await stage.receiver.wait_for(expected, path="/hook")
    # The actor starts every attempt it may in one pass, before any request can arrive.
    assert (actor.in_flight, actor.queued) == (expected, 5 - expected)
    unstarted = await stop_actor(actor, running)
    assert [d.id for d in unstarted] == [d.id for d in deliveries[expected:]]
    assert len(stage.receiver.received) == expected


async def test_strict_attempts_start_one_at_a_time_in_queue_order(stage: Stage) -> None:
    """Under strict ordering attempts go one at a time, in the order they were queued."""
    endpoint = endpoint_config(
        stage.receiver.url("/hook"), max_in_flight=4, ordering=Ordering.STRICT
    )
    deliveries = await claim_all(
        stage, dataclasses.replace(endpoint, ordering=Ordering.DISPATCH), 4
    )
    actor = EndpointActor(endpoint, stage.deps())
    for delivery in deliveries:
        actor.offer(delivery)
    running = asyncio.get_running_loop().create_task(actor.run())
    received = await stage.receiver.wait_for(4, path="/hook")
    await stage.queue.wait_until(lambda q: len(q.recorded) == 4)
    await stop_actor(actor, running)
    assert [r.headers["X-MisarMail-Delivery"] for r in received] == [str(d.id) for d in deliveries]
    assert stage.receiver.max_concurrency("/hook") == 1
    assert [r.outcome for r in stage.queue.recorded] == ["delivered"] * 4


@pytest.mark.parametrize(
    ("rate_limit_per_s", "started_when_each_ran"),
    [(None, [3, 3, 3]), (10.0, [1, 2, 3])],
)
async def test_rate_limit_spaces_starts(
    stage: Stage, rate_limit_per_s: float | None, started_when_each_ran: list[int]
) -> None:
    """A rate limit starts attempts one by one in queue order; without one they start together.

    Counted, not timed: an attempt's task runs only once the actor yields, so the number of
    attempts started when each one runs tells whether the actor waited between starts.
    """
    endpoint = endpoint_config(
        stage.receiver.url("/hook"), max_in_flight=8, rate_limit_per_s=rate_limit_per_s
    )
    deliveries = await claim_all(stage, endpoint, 3)
    seen: list[tuple[int, int]] = []
    actor: EndpointActor | None = None

    def on_started(delivery: Delivery, _at: datetime) -> None:
        assert actor is not None
        seen.append((delivery.id, actor.started))

    actor = EndpointActor(endpoint, stage.deps(on_started=on_started))
    for delivery in deliveries:
        actor.offer(delivery)
    running = asyncio.get_running_loop().create_task(actor.run())
    await stage.queue.wait_until(lambda q: len(q.recorded) == 3)
    await stop_actor(actor, running)
    assert [delivery_id for delivery_id, _ in seen] == [d.id for d in deliveries]
    assert [started for _, started in seen] == started_when_each_ran


@pytest.mark.parametrize(
    ("timeout_s", "lease_over_margin_s", "sent"),
    [(3.0, -1.0, False), (3.0, 60.0, True), (25.0, -1.0, False), (25.0, 1.0, True)],
)
async def test_attempt_whose_lease_is_about_to_expire_is_skipped(
    stage: Stage, timeout_s: float, lease_over_margin_s: float, sent: bool
) -> None:
    """An attempt starts only if its lease outlives the endpoint's request timeout by
    LEASE_MARGIN_S."""
    endpoint = endpoint_config(stage.receiver.url("/hook"), timeout_s=timeout_s)
    [delivery] = await claim_all(stage, endpoint, 1)
    assert timeout_s < REQUEST_TIMEOUT_S  # the stage's bound on every attempt is not the one
    lease_s = timeout_s + LEASE_MARGIN_S + lease_over_margin_s
    actor = EndpointActor(endpoint, stage.deps(lease_s=lease_s))
    actor.offer(delivery)
    await actor.run()  # returns once out of work: the attempt was skipped, or done
    if sent:
        await stage.queue.wait_until(lambda q: len(q.recorded) == 1)
    assert actor.started == (1 if sent else 0)
    assert len(stage.receiver.received) == (1 if sent else 0)
    assert [r.outcome for r in stage.queue.recorded] == (["delivered"] if sent else [])
    # A skipped delivery keeps its lease until it expires; it is not given back early.
    assert stage.queue.leased() == (0 if sent else 1)
    assert stage.queue.released == []


async def test_cancelled_attempt_submits_a_shutdown_outcome(stage: Stage) -> None:
    """An attempt cancelled mid-request is recorded as SHUTDOWN (status 0) under its lease."""
    stage.receiver.script("/hook", HANG)
    endpoint = endpoint_config(stage.receiver.url("/hook"))
    [delivery] = await claim_all(stage, endpoint, 1)
    actor = EndpointActor(endpoint, stage.deps())
    actor.offer(delivery)
    running = asyncio.get_running_loop().create_task(actor.run())
    await stage.receiver.wait_for(1, path="/hook")
    await stop_actor(actor, running)
    await stage.queue.wait_until(lambda q: len(q.recorded) == 1)
    [[outcome]] = stage.queue.record_calls
    assert (outcome.delivery_id, outcome.lease) == (delivery.id, delivery.lease)
    assert (outcome.status, outcome.error_kind) == (0, ErrorKind.SHUTDOWN)
    assert outcome.error_message == "engine stopped during the attempt"
    assert [r.outcome for r in stage.queue.recorded] == ["retry"]


async def test_outcome_carries_the_delivery_lease_clock_and_response(stage: Stage) -> None:
    """The Outcome of a sent attempt names its delivery and lease, its start and the response,
    and the receiver got the request built for that attempt."""
    stage.receiver.script("/hook", Reply(status=200, body=b"thanks"))
    endpoint = endpoint_config(stage.receiver.url("/hook"))
    [delivery] = await claim_all(stage, endpoint, 1)
    actor = EndpointActor(endpoint, stage.deps())
    actor.offer(delivery)
    running = asyncio.get_running_loop().create_task(actor.run())
    await stage.queue.wait_until(lambda q: len(q.recorded) == 1)
    await stop_actor(actor, running)
    [[outcome]] = stage.queue.record_calls
    assert (outcome.delivery_id, outcome.lease) == (delivery.id, delivery.lease)
    assert outcome.started_at.utcoffset() is not None
    assert outcome.duration_ms >= 0
    assert (outcome.status, outcome.error_kind, outcome.error_message) == (200, None, None)
    assert outcome.response_excerpt == "thanks"
    [request] = stage.receiver.received
    assert request.body == delivery.body
    assert request.headers["X-MisarMail-Attempt"] == str(delivery.attempt)
    verify_signature(request.body, request.headers["X-MisarMail-Signature"], endpoint.secrets)


async def test_attempt_that_cannot_be_prepared_is_an_internal_failure(stage: Stage) -> None:
    """A corrupt secret sends nothing and is recorded as INTERNAL, so the delivery is retried."""
    endpoint = endpoint_config(stage.receiver.url("/hook"))
    [delivery] = await claim_all(stage, endpoint, 1)
    actor = EndpointActor(dataclasses.replace(endpoint, secrets=("not-a-secret",)), stage.deps())
    actor.offer(delivery)
    running = asyncio.get_running_loop().create_task(actor.run())
    await stage.queue.wait_until(lambda q: len(q.recorded) == 1)
    await stop_actor(actor, running)
    [[outcome]] = stage.queue.record_calls
    assert (outcome.status, outcome.error_kind, outcome.error_message) == (
        0,
        ErrorKind.INTERNAL,
        "ValueError",
    )
    assert stage.receiver.received == []
    assert [r.outcome for r in stage.queue.recorded] == ["retry"]
