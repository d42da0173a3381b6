"""ResultWriter against the in-memory queue: batches, an outage waited out, the bounded buffer."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime

from engine.delivery.writer import ResultWriter
from engine.models import Outcome
from tests.support.memory_queue import MemoryQueue, endpoint_config


async def leased_outcomes(queue: MemoryQueue, count: int) -> list[Outcome]:
    """Successful outcomes of ``count`` freshly claimed deliveries, in claim order."""
    queue.add(endpoint_config("http://127.0.0.1:9/hook"), count)
    claimed = await queue.claim({}, default_room=count, max_rows=count)
    return [
        Outcome(
            delivery_id=delivery.id,
            lease=delivery.lease,
            started_at=datetime.now(UTC),
            duration_ms=1,
            status=200,
        )
        for delivery, _ in claimed
    ]


@asynccontextmanager
async def writing(writer: ResultWriter) -> AsyncIterator[None]:
    """Run the writer until the block ends, then until it has written everything it holds."""
    task = asyncio.get_running_loop().create_task(writer.run())
    try:
        yield
    finally:
        writer.close()
        await task


async def test_writer_batches_what_accumulated() -> None:
    """Outcomes submitted before the writer runs are written in batches of at most ``batch``."""
    queue = MemoryQueue()
    writer = ResultWriter(queue, batch=3, buffer_max=100)
    outcomes = await leased_outcomes(queue, 7)
    for outcome in outcomes:
        writer.submit(outcome)
    async with writing(writer):
        pass  # closing the writer waits until it wrote everything
    assert [len(call) for call in queue.record_calls] == [3, 3, 1]
    assert [o for call in queue.record_calls for o in call] == outcomes
    assert [r.outcome for r in queue.recorded] == ["delivered"] * 7
    assert writer.written == 7


async def test_outcomes_survive_an_outage_and_are_written_once_after() -> None:
    """Through DatabaseUnavailable the outcomes stay buffered, then each is written exactly once."""
    queue = MemoryQueue()
    writer = ResultWriter(queue, batch=10, buffer_max=100)
    outcomes = await leased_outcomes(queue, 2)
    queue.fail_next(3)
    for outcome in outcomes:
        writer.submit(outcome)
    async with writing(writer):
        await queue.wait_until(lambda q: q.failures_raised >= 2)
        # The first failure was handled before the second call was made.
        assert (writer.healthy, writer.buffered) == (False, 2)
    assert queue.failures_raised == 3
    assert queue.record_calls == [outcomes]
    assert [r.outcome for r in queue.recorded] == ["delivered", "delivered"]
    assert writer.healthy
    assert (writer.buffered, writer.written) == (0, 2)


async def test_has_room_goes_false_at_buffer_max_and_back() -> None:
    """has_room holds below buffer_max, turns false at it, and returns once the buffer drains."""
    queue = MemoryQueue()
    writer = ResultWriter(queue, batch=2, buffer_max=3)
    outcomes = await leased_outcomes(queue, 3)
    writer.submit(outcomes[0])
    writer.submit(outcomes[1])
    assert writer.has_room()
    writer.submit(outcomes[2])
    assert not writer.has_room()
    async with writing(writer):
        await queue.wait_until(lambda q: len(q.record_calls) >= 1)
        # One batch of two written: one left, under the bound again.
        assert writer.has_room()
    assert len(queue.recorded) == 3
    assert writer.has_room()
