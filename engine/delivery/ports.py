"""What the delivery stage needs of the queue, as a Protocol.

The dispatcher and the result writer depend on these calls only, not on asyncpg or the
:class:`engine.db.queue.DeliveryQueue` that implements them over Postgres. Tests drive them against
an in-memory queue that keeps the same promises, as procrastinate's ``InMemoryConnector`` does.
Connection-level failures arrive as :class:`engine.db.pool.DatabaseUnavailable`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Protocol
from uuid import UUID

from engine.models import Delivery, EndpointConfig, Outcome, Recorded


class ClaimQueue(Protocol):
    """The dispatcher's side: lease due deliveries, give back unstarted ones, say it waits (and
    keep saying it: the mark expires)."""

    async def claim(
        self,
        rooms: Mapping[UUID, int],
        *,
        default_room: int,
        max_rows: int,
        after: UUID | None = None,
    ) -> list[tuple[Delivery, EndpointConfig]]: ...

    async def release(self, deliveries: Sequence[Delivery]) -> int: ...

    async def set_engine_waiting(self, waiting: bool) -> None: ...

    async def refresh_engine_waiting(self) -> None: ...

    async def next_due_at(self) -> datetime | None: ...


class AttemptLog(Protocol):
    """The result writer's side: record a batch of attempt outcomes."""

    async def record(self, outcomes: Sequence[Outcome]) -> list[Recorded]: ...
