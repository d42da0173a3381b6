"""Dispatcher against the in-memory queue, with real actors sending to a real Receiver: claims
within each actor's room and the global cap, shutdown, supervision, and the database away."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable

import pytest

from engine.delivery import dispatcher as dispatcher_module
from engine.delivery.actor import EndpointActor
from engine.delivery.dispatcher import Dispatcher
from engine.models import ErrorKind, Ordering
from tests.support.delivery_stage import Stage, delivery_stage, running
from tests.support.memory_queue import endpoint_config
from tests.support.receiver import Reply

HANG = Reply(delay_s=3600)  # answers only when the attempt is cancelled


@pytest.fixture
async def stage() -> AsyncIterator[Stage]:
    """The delivery stage over the in-memory queue."""
    async with delivery_stage() as s:
        yield s


def make_dispatcher(
    stage: Stage,
    *,
    queue_per_in_flight: int = 2,
    claim_batch: int = 100,
    max_outstanding: int = 1000,
    poll_interval_s: float = 0.05,
    listening: Callable[[], bool] = lambda: True,
) -> Dispatcher:
    """A dispatcher polling often, with no shutdown grace: in-flight attempts are cancelled; its
    listener is connected unless ``listening`` says otherwise."""
    dispatcher: Dispatcher | None = None

    def on_room() -> None:
        assert dispatcher is not None
        dispatcher.wake()

    dispatcher = Dispatcher(
        stage.queue,
        stage.deps(queue_per_in_flight=queue_per_in_flight, on_room=on_room),
        poll_interval_s=poll_interval_s,
        claim_batch=claim_batch,
        max_outstanding=max_outstanding,
        shutdown_grace_s=0.0,
        listening=listening,
    )
    return dispatcher


async def test_claims_stay_within_each_actors_room_and_the_global_cap(stage: Stage) -> None:
    """Every claim asks for each actor's free room and at most max_outstanding in all, and the
    dispatcher fills exactly up to that cap while nothing finishes."""
    # Their limits add up to more than the cap of 5: the queue leases no more than an endpoint's
    # max_in_flight, so only the cap and the rooms stop the claims here.
    max_in_flight = {"/a": 2, "/b": 3, "/c": 2}
    endpoints = {}
    for path, limit in max_in_flight.items():
        stage.receiver.script(path, HANG)
        endpoints[path] = endpoint_config(stage.receiver.url(path), max_in_flight=limit)
        stage.queue.add(endpoints[path], 10)
    capacity = {e.id: 2 * e.max_in_flight for e in endpoints.values()}  # queue_per_in_flight 2
    async with running(make_dispatcher(stage, claim_batch=2, max_outstanding=5)):
        await stage.queue.wait_until(lambda q: q.leased() >= 5)
        # Each endpoint sends what its share of the 5 allows, and no more.
        expected = sum(min(e.max_in_flight, stage.queue.leased(e.id)) for e in endpoints.values())
        await stage.receiver.wait_for(expected)
        assert stage.queue.leased() == 5
        calls = list(stage.queue.claim_calls)
    assert len(calls) >= 3
    for call in calls:
        assert call.max_rows <= 2
        assert sum(call.leased_before.values()) + call.max_rows <= 5
        for endpoint_id, room in call.rooms.items():
            assert room == capacity[endpoint_id] - call.leased_before[endpoint_id]
    for endpoint in endpoints.values():
        assert stage.queue.leased(endpoint.id) <= capacity[endpoint.id]


async def test_shutdown_releases_unstarted_deliveries(stage: Stage) -> None:
    """At stop, claimed deliveries that never started are given back; the one in flight is
    cancelled and recorded as SHUTDOWN."""
    stage.receiver.script("/hook", HANG)
    # A rate limit that schedules the second start 10 s after the first: the other four wait.
    endpoint = endpoint_config(stage.receiver.url("/hook"), max_in_flight=5, rate_limit_per_s=0.1)
    first, *unstarted = stage.queue.add(endpoint, 5)
    async with running(make_dispatcher(stage)) as stop:
        # A new endpoint gets the default room, so all five are claimed: one starts.
        await stage.queue.wait_until(lambda q: q.leased() == 5)
        await stage.receiver.wait_for(1, path="/hook")
        stop.set()
    await stage.queue.wait_until(lambda q: len(q.recorded) == 1)
    assert [d.id for d in stage.queue.released] == unstarted
    assert all(stage.queue.rows[i].lease is None for i in unstarted)
    [[outcome]] = stage.queue.record_calls
    assert (outcome.delivery_id, outcome.error_kind) == (first, ErrorKind.SHUTDOWN)
    assert stage.queue.leased() == 0


async def test_crashing_actor_is_restarted_with_backoff_and_others_go_on(
    stage: Stage, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An actor that crashes is restarted after the first backoff step and held by the next,
    while another endpoint's actor delivers everything."""
    calm = endpoint_config(stage.receiver.url("/calm"))
    crashy = endpoint_config(stage.receiver.url("/crashy"))
    crashes_left = {crashy.id: 2}
    crashed_twice = asyncio.Event()
    original_run = EndpointActor.run

    async def run_crashing(self: EndpointActor) -> None:
        if crashes_left.get(self.config.id, 0):
            crashes_left[self.config.id] -= 1
            if not crashes_left[self.config.id]:
                crashed_twice.set()
            raise RuntimeError("injected actor crash")
        await original_run(self)

    monkeypatch.setattr(EndpointActor, "run", run_crashing)
    # Restart at once after the first crash; after the second, wait longer than the test lives.
    monkeypatch.setattr(dispatcher_module, "RESTART_BACKOFF_S", (0.0, 3600.0))
    calm_ids = stage.queue.add(calm, 3)
    crashy_ids = stage.queue.add(crashy, 3)
    dispatcher = make_dispatcher(stage)
    async with running(dispatcher):
        await crashed_twice.wait()
        await stage.queue.wait_until(lambda q: len(q.recorded) == 3)
        assert dispatcher.crashes == 2
    assert sorted(r.delivery_id for r in stage.queue.recorded) == calm_ids
    assert {r.outcome for r in stage.queue.recorded} == {"delivered"}
    assert stage.receiver.received_on("/crashy") == []
    assert sorted(d.id for d in stage.queue.released) == crashy_ids


async def test_claim_failures_are_waited_out_and_waiting_is_set_only_when_idle(
    stage: Stage,
) -> None:
    """Failed claims are retried; the engine is marked waiting once claims work and nothing is
    due, and not while an actor is full even though its claim found nothing."""
    stage.queue.fail_next(3)
    dispatcher = make_dispatcher(stage, queue_per_in_flight=1)
    async with running(dispatcher):
        await stage.queue.wait_until(lambda q: q.waiting is True)
        assert stage.queue.failures_raised == 3
        assert stage.queue.waiting_calls == [True]
        # Now an endpoint whose actor fills up: one in flight, one queued, room 0.
        stage.receiver.script("/hook", HANG)
        endpoint = endpoint_config(stage.receiver.url("/hook"), max_in_flight=1)
        stage.queue.add(endpoint, 2)
        dispatcher.wake()
        await stage.receiver.wait_for(1, path="/hook")
        # Two empty claims with the actor full: the first one's cycle has ended by the second.
        await stage.queue.wait_until(
            lambda q: (
                sum(c.rooms.get(endpoint.id) == 0 and not c.claimed for c in q.claim_calls) >= 2
            )
        )
        # The claim cleared the mark as it leased; a full actor does not make the engine idle.
        assert stage.queue.waiting is False
        assert stage.queue.waiting_calls == [True]


async def test_the_waiting_mark_follows_the_listener(stage: Stage) -> None:
    """An idle engine sets the waiting mark only while its listener is connected, and clears it
    when the listener goes (LISTEN off is a listener that never connects)."""
    connected = False
    dispatcher = make_dispatcher(stage, listening=lambda: connected)
    async with running(dispatcher):
        await stage.queue.wait_until(lambda q: len(q.claim_calls) >= 3)
        assert stage.queue.waiting_calls == []
        assert stage.queue.refreshes == 0
        connected = True
        dispatcher.wake()
        await stage.queue.wait_until(lambda q: q.waiting is True)
        connected = False
        dispatcher.wake()
        await stage.queue.wait_until(lambda q: q.waiting is False)
        assert stage.queue.waiting_calls == [True, False]


@pytest.mark.parametrize(("refresh_s", "refreshed"), [(3600.0, False), (0.0, True)])
async def test_an_idle_engine_refreshes_its_mark_at_the_refresh_period(
    stage: Stage, monkeypatch: pytest.MonkeyPatch, refresh_s: float, refreshed: bool
) -> None:
    """An idle engine refreshes its waiting mark once the refresh period has passed since it set
    or refreshed it, and not before (claim cycles alone do not refresh it)."""
    monkeypatch.setattr(dispatcher_module, "WAITING_REFRESH_S", refresh_s)
    dispatcher = make_dispatcher(stage)
    async with running(dispatcher):
        await stage.queue.wait_until(lambda q: q.waiting is True)
        cycles = len(stage.queue.claim_calls)
        await stage.queue.wait_until(lambda q: len(q.claim_calls) >= cycles + 3)
    assert (stage.queue.refreshes > 0) is refreshed
    assert stage.queue.waiting_calls == [True]


async def test_a_poll_interval_longer_than_the_refresh_period_does_not_let_the_mark_lapse(
    stage: Stage, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An idle engine whose poll interval is far longer than the refresh period wakes up to
    refresh its waiting mark, again and again."""
    monkeypatch.setattr(dispatcher_module, "WAITING_REFRESH_S", 0.01)
    dispatcher = make_dispatcher(stage, poll_interval_s=3600.0)
    async with running(dispatcher):
        await stage.queue.wait_until(lambda q: q.refreshes >= 3)
    assert stage.queue.waiting_calls == [True]


@pytest.mark.parametrize("head_due_in_s", [3600.0, -1.0])
async def test_an_idle_engine_does_not_spin_on_rows_blocked_behind_a_strict_head(
    stage: Stage, monkeypatch: pytest.MonkeyPatch, head_due_in_s: float
) -> None:
    """A row that is due but waits behind a strict endpoint's head (due only later) does not
    make an idle engine claim again at once: between two refreshes of its mark (its only clock,
    with a poll interval of an hour) it claims about once. With the head due too, it is sent."""
    monkeypatch.setattr(dispatcher_module, "WAITING_REFRESH_S", 0.1)
    strict = endpoint_config(stage.receiver.url("/strict"), ordering=Ordering.STRICT)
    stage.queue.add(strict, due_in_s=head_due_in_s)  # the head
    stage.queue.add(strict)  # due now, behind it
    dispatcher = make_dispatcher(stage, poll_interval_s=3600.0)
    async with running(dispatcher):
        if head_due_in_s > 0:
            await stage.queue.wait_until(lambda q: q.refreshes >= 5)
        else:
            await stage.receiver.wait_for(2, timeout_s=30)
    if head_due_in_s > 0:
        assert len(stage.queue.claim_calls) <= stage.queue.refreshes + 3
        assert stage.receiver.received == []
    else:
        assert [r.path for r in stage.receiver.received] == ["/strict", "/strict"]
