"""The delivery stage wired for unit tests: the in-memory queue, a running result writer, a real
Sender and a real Receiver on loopback, all inside the socket-level loopback fence.

Nothing is mocked but the database: attempts are real POSTs, and their outcomes go through the
real ResultWriter into :class:`tests.support.memory_queue.MemoryQueue`.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import datetime

from engine.delivery.actor import ActorDeps
from engine.delivery.dispatcher import Dispatcher
from engine.delivery.http import Sender
from engine.delivery.writer import ResultWriter
from engine.models import Delivery
from tests.support.loopback_fence import loopback_only
from tests.support.memory_queue import MemoryQueue
from tests.support.receiver import Receiver

__all__ = ["REQUEST_TIMEOUT_S", "Stage", "delivery_stage", "running"]

# Attempts in these tests end by an answer or a cancellation; the deadline is only a backstop.
REQUEST_TIMEOUT_S = 60.0


@dataclass
class Stage:
    """The parts every actor and the dispatcher share, and the queue and receiver to inspect."""

    queue: MemoryQueue
    receiver: Receiver
    sender: Sender
    writer: ResultWriter

    def deps(
        self,
        *,
        queue_per_in_flight: int = 2,
        lease_s: float = 300.0,
        on_started: Callable[[Delivery, datetime], None] | None = None,
        on_room: Callable[[], None] | None = None,
        slots: int = 256,
    ) -> ActorDeps:
        """ActorDeps over this stage; by default leases are roomy."""
        return ActorDeps(
            sender=self.sender,
            writer=self.writer,
            request_timeout_s=REQUEST_TIMEOUT_S,
            queue_per_in_flight=queue_per_in_flight,
            lease_s=lambda: lease_s,
            on_room=on_room or (lambda: None),
            on_started=on_started or (lambda _delivery, _at: None),
            slots=asyncio.Semaphore(slots),
        )


@asynccontextmanager
async def delivery_stage(*, batch: int = 64, buffer_max: int = 1024) -> AsyncIterator[Stage]:
    """A Stage whose writer runs until the block ends, then writes what it still holds."""
    queue = MemoryQueue()
    with loopback_only() as refused:
        async with (
            Receiver() as receiver,
            Sender(
                timeout_s=REQUEST_TIMEOUT_S, allow_http=True, allow_private_networks=True
            ) as sender,
        ):
            writer = ResultWriter(queue, batch=batch, buffer_max=buffer_max)
            writing = asyncio.get_running_loop().create_task(writer.run())
            try:
                yield Stage(queue, receiver, sender, writer)
            finally:
                writer.close()
                await writing
    assert refused == [], f"attempts tried to connect beyond loopback: {refused}"


@asynccontextmanager
async def running(dispatcher: Dispatcher) -> AsyncIterator[asyncio.Event]:
    """Run ``dispatcher`` until the block ends (or sets the yielded stop event), then await it."""
    stop = asyncio.Event()
    task = asyncio.get_running_loop().create_task(dispatcher.run(stop))
    try:
        yield stop
    finally:
        stop.set()
        await task
