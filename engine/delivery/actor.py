"""EndpointActor: everything in flight for one endpoint, and nothing else.

One actor per endpoint with work gives isolation for free: a slow endpoint fills only its own
queue and its own in-flight slots, while the others keep going. The queue is bounded (its room is
what the dispatcher claims for), attempts start in queue order (claim order: event order), at most
``max_in_flight`` at once (one under strict ordering), each no earlier than the start time its
claim gave it. The claim keeps both limits across every engine (sql/functions/40_claim.sql): it
leases no more rows than the endpoint may have in flight, and schedules a rate-limited endpoint's
starts; the actor only keeps to what it was given.

An actor lives only while it has work: something queued or something in flight. Then run()
returns and the dispatcher forgets the actor, so an engine's memory and tasks follow the
deliveries it holds, never the number of endpoints a burst touched
(docs/decisions/0009-memory-per-endpoint.md).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime

import structlog

from engine.delivery.http import Sender, SendResult
from engine.delivery.request import prepare_request
from engine.delivery.writer import ResultWriter
from engine.models import Delivery, EndpointConfig, ErrorKind, Ordering, Outcome

log = structlog.get_logger("engine.delivery.actor")

# An attempt is only started if its lease outlives the request by this margin; otherwise the
# delivery is left to expire and be claimed afresh, so a result is never fenced off as stale.
LEASE_MARGIN_S = 5.0
MAX_QUEUE = 256


@dataclass(frozen=True)
class ActorDeps:
    """What every actor shares; owned by the app."""

    sender: Sender
    writer: ResultWriter
    # An upper bound on every attempt's timeout, or None: the deprecated WEBHOOKS_REQUEST_TIMEOUT_S.
    # Each endpoint's own timeout (EndpointConfig.timeout_s) applies otherwise.
    request_timeout_s: float | None
    queue_per_in_flight: int
    lease_s: Callable[[], float]
    on_room: Callable[[], None]
    on_started: Callable[[Delivery, datetime], None]  # an attempt starts (metrics)
    # One slot per attempt in flight across all endpoints (= the HTTP connection limit), taken
    # before an attempt's clock starts: waiting for a local connection must not eat into its
    # request timeout, nor make thousands of attempts wait inside the HTTP client at once.
    slots: asyncio.Semaphore


@dataclass(frozen=True, slots=True)
class Queued:
    delivery: Delivery
    claimed_at: float  # time.monotonic() of the claim
    start_at: float  # time.monotonic() before which the attempt may not start (rate limit)


class EndpointActor:
    """Bounded queue plus in-flight limit for one endpoint; run() returns once it has no work.

    Slotted: the dispatcher holds one per endpoint with work, up to its cap on what is claimed.
    """

    __slots__ = (
        "_changed",
        "_deps",
        "_queue",
        "_stopping",
        "_tasks",
        "config",
        "started",
    )

    def __init__(self, config: EndpointConfig, deps: ActorDeps) -> None:
        self.config = config
        self._deps = deps
        self._queue: collections.deque[Queued] = collections.deque()
        self._tasks: set[asyncio.Task[None]] = set()
        self._changed = asyncio.Event()
        self._stopping = False
        self.started = 0

    @property
    def endpoint_id(self) -> str:
        return str(self.config.id)

    @property
    def limit(self) -> int:
        return 1 if self.config.ordering is Ordering.STRICT else self.config.max_in_flight

    @property
    def capacity(self) -> int:
        """Queue plus in-flight bound: enough to keep ``limit`` busy, small enough to send
        everything well within the lease (a rate-limited endpoint gets a shorter queue)."""
        cap = min(MAX_QUEUE, self.limit * self._deps.queue_per_in_flight)
        if self.config.rate_limit_per_s is not None:
            cap = min(cap, max(1, int(self.config.rate_limit_per_s * self._deps.lease_s() / 4)))
        return max(cap, self.limit)

    @property
    def timeout_s(self) -> float:
        """The request timeout of this endpoint's attempts: its own, within the process's bound."""
        cap = self._deps.request_timeout_s
        return self.config.timeout_s if cap is None else min(self.config.timeout_s, cap)

    @property
    def in_flight(self) -> int:
        return len(self._tasks)

    @property
    def queued(self) -> int:
        return len(self._queue)

    def room(self) -> int:
        return max(0, self.capacity - len(self._queue) - len(self._tasks))

    def update(self, config: EndpointConfig) -> None:
        """Take the endpoint's latest settings (every claim carries them)."""
        self.config = config

    def offer(self, delivery: Delivery) -> None:
        """Queue a claimed delivery. The dispatcher claims only up to room(), so this fits;
        going over by a few is harmless (the bound is on what we claim, not a hard wall)."""
        now = time.monotonic()
        self._queue.append(Queued(delivery, now, now + delivery.send_in_s))
        self._changed.set()

    def stop(self) -> list[Delivery]:
        """Stop starting attempts; return the queued deliveries that never started."""
        self._stopping = True
        self._changed.set()
        unstarted = [q.delivery for q in self._queue]
        self._queue.clear()
        return unstarted

    async def wait_in_flight(self) -> None:
        """Wait for the attempts in flight (each bounded by the request timeout)."""
        while self._tasks:
            await asyncio.wait(set(self._tasks))

    def cancel_in_flight(self) -> None:
        for task in self._tasks:
            task.cancel()

    async def run(self) -> None:
        """Start attempts as slots free up; return when stopped, or out of work.

        Out of work: nothing queued and nothing in flight. A rate limit needs no waiting here:
        the claim schedules every start, so the next claim's actor keeps to the same schedule.
        """
        while not self._stopping:
            self._changed.clear()
            if self._queue and len(self._tasks) < self.limit:
                if not self._deps.writer.has_room():
                    await asyncio.sleep(0.05)
                    continue
                # The rate limit: the claim scheduled this start. Woken early by stop() or offer().
                wait_s = self._queue[0].start_at - time.monotonic()
                if wait_s > 0:
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self._changed.wait(), wait_s)
                    continue
                await self._deps.slots.acquire()
                # stop() empties the queue: it may have run while we waited for the slot.
                item = self._queue.popleft() if self._queue else None
                if item is None or not self._start(item):
                    self._deps.slots.release()
                continue
            if not self._queue and not self._tasks:
                return
            await self._changed.wait()

    def _start(self, item: Queued) -> bool:
        """Start the attempt as a task holding one of ``slots``; False if it was skipped."""
        lease_left = item.claimed_at + self._deps.lease_s() - time.monotonic()
        if lease_left < self.timeout_s + LEASE_MARGIN_S:
            log.warning(
                "attempt_skipped_lease_expiring",
                endpoint_id=self.endpoint_id,
                delivery_id=item.delivery.id,
                lease_left_s=round(lease_left, 1),
            )
            return False
        self.started += 1
        task = asyncio.get_running_loop().create_task(self._attempt(item.delivery, self.config))
        self._tasks.add(task)
        task.add_done_callback(self._finished)
        return True

    def _finished(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        self._deps.slots.release()
        self._changed.set()
        if self.room() * 2 >= self.capacity:
            self._deps.on_room()

    async def _attempt(self, delivery: Delivery, config: EndpointConfig) -> None:
        """Send one attempt and submit its Outcome, whatever happens, cancellation included."""
        started_at = datetime.now(UTC)
        started = time.monotonic()
        self._deps.on_started(delivery, started_at)
        try:
            request = prepare_request(delivery, config, timestamp=int(time.time()))
            result = await self._deps.sender.send(
                request.url, request.body, request.headers, timeout_s=request.timeout_s
            )
        except asyncio.CancelledError:
            stopped = SendResult.failed(ErrorKind.SHUTDOWN, "engine stopped during the attempt")
            self._deps.writer.submit(_outcome(delivery, started_at, started, stopped))
            raise
        except Exception as exc:
            log.exception("attempt_crashed", endpoint_id=self.endpoint_id, delivery_id=delivery.id)
            result = SendResult.failed(ErrorKind.INTERNAL, type(exc).__name__)
        self._deps.writer.submit(_outcome(delivery, started_at, started, result))


def _outcome(
    delivery: Delivery, started_at: datetime, started: float, result: SendResult
) -> Outcome:
    """The one place an attempt's Outcome is built: the delivery's lease, the clock, the result."""
    return Outcome(
        delivery_id=delivery.id,
        lease=delivery.lease,
        started_at=started_at,
        duration_ms=int((time.monotonic() - started) * 1000),
        status=result.status,
        error_kind=result.error_kind,
        error_message=result.error_message,
        response_excerpt=result.excerpt,
        retry_after_s=result.retry_after_s,
    )
