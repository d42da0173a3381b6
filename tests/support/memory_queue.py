"""An in-memory queue keeping the promises of engine.delivery.ports, as procrastinate's
``InMemoryConnector`` does: unit tests drive the dispatcher, the actors and the result writer
against it, with no Postgres in the way.

The promises are the real queue's (engine.db.queue.DeliveryQueue over sql/functions/40_claim.sql
and 50_record.sql): a claim leases due rows, at most each endpoint's room (``default_room`` for an
endpoint not in ``rooms``), its limit (``max_in_flight``, 1 when strict) less what it has leased
already, and ``max_rows`` in all, oldest due first, strict endpoints only their oldest live row;
a rate-limited endpoint's rows get start times one 1/rate apart (``send_in_s``), only as far
ahead as a quarter of the lease; a leased row is not due until its lease runs out; a claim that
leases rows clears the engine's waiting mark; release gives unstarted rows back (due at once);
record fences each result by its lease and answers with a :class:`Recorded` per outcome. Retries
are scheduled ``retry_delay_s`` ahead, and ``max_attempts`` ends a delivery as failed.

Every call is logged, and :meth:`MemoryQueue.wait_until` lets a test wait on the queue's state.
:meth:`MemoryQueue.fail_next` makes the next calls raise DatabaseUnavailable, as a lost database
does.
"""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
import math
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from uuid import UUID

from engine.db.pool import DatabaseUnavailable
from engine.models import (
    DEFAULT_TIMEOUT_S,
    AttemptOutcome,
    Delivery,
    EndpointConfig,
    Ordering,
    Outcome,
    Recorded,
)

__all__ = ["ClaimCall", "MemoryQueue", "Row", "endpoint_config"]


def endpoint_config(
    url: str,
    *,
    max_in_flight: int = 8,
    ordering: Ordering = Ordering.DISPATCH,
    rate_limit_per_s: float | None = None,
    timeout_s: float = DEFAULT_TIMEOUT_S,
) -> EndpointConfig:
    """An endpoint as a claim returns it, with a valid signing secret."""
    return EndpointConfig(
        id=uuid.uuid4(),
        url=url,
        secrets=("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",),
        max_in_flight=max_in_flight,
        ordering=ordering,
        rate_limit_per_s=rate_limit_per_s,
        timeout_s=timeout_s,
    )


@dataclass
class Row:
    """One live delivery, as ``webhooks.deliveries`` holds it."""

    id: int
    endpoint: EndpointConfig
    event_type: str
    body: bytes
    due_at: datetime
    created_at: datetime
    attempts: int = 0
    lease: UUID | None = None


@dataclass(frozen=True)
class ClaimCall:
    """One claim as the dispatcher made it, with what was leased before it and what it returned."""

    rooms: dict[UUID, int]
    default_room: int
    max_rows: int
    leased_before: dict[UUID, int]
    claimed: list[Delivery]


@dataclass
class MemoryQueue:
    """The queue's promises in memory; see the module docstring."""

    lease_s: float = 300.0
    retry_delay_s: float = 3600.0
    max_attempts: int = 6
    rows: dict[int, Row] = field(default_factory=dict)
    waiting: bool | None = None
    waiting_calls: list[bool] = field(default_factory=list)
    refreshes: int = 0  # refresh_engine_waiting calls
    claim_calls: list[ClaimCall] = field(default_factory=list)
    record_calls: list[list[Outcome]] = field(default_factory=list)
    released: list[Delivery] = field(default_factory=list)
    next_slot_at: dict[UUID, datetime] = field(default_factory=dict)  # the rate limits' schedules
    recorded: list[Recorded] = field(default_factory=list)
    failures_raised: int = 0
    _fail_left: int = 0
    _ids: itertools.count[int] = field(default_factory=lambda: itertools.count(1))
    _changed: asyncio.Condition = field(default_factory=asyncio.Condition)

    def add(self, endpoint: EndpointConfig, count: int = 1, *, due_in_s: float = 0.0) -> list[int]:
        """Write ``count`` deliveries for ``endpoint``, due in ``due_in_s``; return their ids."""
        now = datetime.now(UTC)
        ids = []
        for _ in range(count):
            row_id = next(self._ids)
            body = b'{"id":"evt_%d","type":"email.sent","data":{}}' % row_id
            self.rows[row_id] = Row(
                row_id, endpoint, "email.sent", body, now + timedelta(seconds=due_in_s), now
            )
            ids.append(row_id)
        return ids

    def fail_next(self, calls: int) -> None:
        """Make the next ``calls`` calls (of any kind) raise DatabaseUnavailable."""
        self._fail_left = calls

    def leased(self, endpoint_id: UUID | None = None) -> int:
        """How many live rows (of ``endpoint_id``, if given) hold an unexpired lease."""
        now = datetime.now(UTC)
        return sum(
            1
            for r in self.rows.values()
            if r.lease is not None
            and r.due_at > now
            and (endpoint_id is None or r.endpoint.id == endpoint_id)
        )

    async def wait_until(self, predicate: Callable[[MemoryQueue], bool]) -> None:
        """Wait until ``predicate(self)`` holds; it is checked after every call."""
        async with self._changed:
            await self._changed.wait_for(lambda: predicate(self))

    async def claim(
        self,
        rooms: Mapping[UUID, int],
        *,
        default_room: int,
        max_rows: int,
        after: UUID | None = None,
    ) -> list[tuple[Delivery, EndpointConfig]]:
        await self._enter()
        now = datetime.now(UTC)
        leased_before = {
            eid: self.leased(eid) for eid in {r.endpoint.id for r in self.rows.values()}
        }
        endpoints = sorted(
            {r.endpoint.id: r.endpoint for r in self.rows.values()}.values(), key=_key
        )
        if after is not None:
            endpoints.sort(key=lambda e: (e.id <= after, e.id))
        claimed: list[tuple[Delivery, EndpointConfig]] = []
        token = uuid.uuid4()
        for endpoint in endpoints:
            limit = 1 if endpoint.ordering is Ordering.STRICT else endpoint.max_in_flight
            room = min(
                rooms.get(endpoint.id, default_room),
                max_rows - len(claimed),
                limit - self.leased(endpoint.id),
            )
            slot = max(self.next_slot_at.get(endpoint.id, now), now)
            if endpoint.rate_limit_per_s is not None:
                ahead_s = self.lease_s / 4 - (slot - now).total_seconds()
                room = min(room, math.floor(ahead_s * endpoint.rate_limit_per_s) + 1)
            if room <= 0:
                continue
            live = sorted((r for r in self.rows.values() if r.endpoint.id == endpoint.id), key=_id)
            if endpoint.ordering is Ordering.STRICT:
                due = live[:1] if live and live[0].due_at <= now else []
            else:
                due = sorted((r for r in live if r.due_at <= now), key=_due)[:room]
            for row in due:
                row.lease, row.due_at = token, now + timedelta(seconds=self.lease_s)
                send_in_s = 0.0
                if endpoint.rate_limit_per_s is not None:
                    send_in_s = (slot - now).total_seconds()
                    slot += timedelta(seconds=1 / endpoint.rate_limit_per_s)
                    self.next_slot_at[endpoint.id] = slot
                delivery = dataclasses.replace(self._delivery(row), send_in_s=send_in_s)
                claimed.append((delivery, endpoint))
        if claimed:
            self.waiting = False  # claim_v2 clears the mark as it leases
        self.claim_calls.append(
            ClaimCall(dict(rooms), default_room, max_rows, leased_before, [d for d, _ in claimed])
        )
        await self._notify()
        return claimed

    async def release(self, deliveries: Sequence[Delivery]) -> int:
        await self._enter()
        count = 0
        for delivery in deliveries:
            row = self.rows.get(delivery.id)
            if row is not None and row.lease == delivery.lease:
                row.lease, row.due_at = None, datetime.now(UTC)
                self.released.append(delivery)
                count += 1
        await self._notify()
        return count

    async def set_engine_waiting(self, waiting: bool) -> None:
        await self._enter()
        self.waiting = waiting
        self.waiting_calls.append(waiting)
        await self._notify()

    async def refresh_engine_waiting(self) -> None:
        await self._enter()
        self.refreshes += 1
        await self._notify()

    async def next_due_at(self) -> datetime | None:
        await self._enter()
        return min((r.due_at for r in self.rows.values()), default=None)

    async def record(self, outcomes: Sequence[Outcome]) -> list[Recorded]:
        await self._enter()
        self.record_calls.append(list(outcomes))
        results = [self._record_one(o) for o in outcomes]
        self.recorded.extend(results)
        await self._notify()
        return results

    def _record_one(self, outcome: Outcome) -> Recorded:
        row = self.rows.get(outcome.delivery_id)
        if row is None or row.lease != outcome.lease:
            return Recorded(outcome.delivery_id, AttemptOutcome.STALE, None, None)
        row.attempts += 1
        if outcome.succeeded or row.attempts >= self.max_attempts:
            del self.rows[row.id]
            ended = AttemptOutcome.DELIVERED if outcome.succeeded else AttemptOutcome.FAILED
            return Recorded(row.id, ended, row.attempts, None)
        row.lease = None
        row.due_at = datetime.now(UTC) + timedelta(seconds=self.retry_delay_s)
        return Recorded(row.id, AttemptOutcome.RETRY, row.attempts, row.due_at)

    def _delivery(self, row: Row) -> Delivery:
        assert row.lease is not None
        return Delivery(
            id=row.id,
            lease=row.lease,
            attempt=row.attempts + 1,
            endpoint_id=row.endpoint.id,
            event_id=row.id,
            event_type=row.event_type,
            body=row.body,
            created_at=row.created_at,
        )

    async def _enter(self) -> None:
        """Every call may find the database away, and yields to the loop as a real call does."""
        await asyncio.sleep(0)
        if self._fail_left > 0:
            self._fail_left -= 1
            self.failures_raised += 1
            await self._notify()
            raise DatabaseUnavailable("the in-memory queue was told to fail this call")

    async def _notify(self) -> None:
        async with self._changed:
            self._changed.notify_all()


def _key(endpoint: EndpointConfig) -> UUID:
    return endpoint.id


def _id(row: Row) -> int:
    return row.id


def _due(row: Row) -> tuple[datetime, int]:
    return row.due_at, row.id
