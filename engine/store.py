"""The engine's only door to Postgres: one typed coroutine per statement of ``queries.sql``.

Every call has a deadline (``timeout=``). Errors our SQL functions raise with a project SQLSTATE
become :mod:`engine.errors` classes, mapped by code and column, never by message text.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterator, Mapping, Sequence
from contextlib import asynccontextmanager, contextmanager
from datetime import datetime, timedelta
from typing import Any
from uuid import UUID

import asyncpg

from engine.errors import from_sqlstate
from engine.models import Delivery, EndpointConfig, Ordering, Outcome, Policy, Recorded
from engine.sqlfiles import queries

QUERY_TIMEOUT_S = 30.0


@contextmanager
def mapped_errors() -> Iterator[None]:
    """Turn our SQLSTATEs into EngineErrors; let every other database error through unchanged."""
    try:
        yield
    except asyncpg.PostgresError as exc:
        mapped = from_sqlstate(
            exc.sqlstate,
            str(exc.args[0]) if exc.args else str(exc),
            getattr(exc, "column_name", None),
        )
        if mapped is None:
            raise
        raise mapped from exc


class Store:
    """Typed access to the webhooks schema through an asyncpg pool owned by the caller."""

    def __init__(self, pool: asyncpg.Pool) -> None:
        self.pool = pool
        self._q = queries()

    @asynccontextmanager
    async def _conn(self) -> AsyncIterator[asyncpg.pool.PoolConnectionProxy]:
        async with self.pool.acquire(timeout=QUERY_TIMEOUT_S) as conn:
            yield conn

    async def _fetch(self, name: str, *args: Any) -> list[asyncpg.Record]:
        with mapped_errors():
            async with self._conn() as conn:
                return list(await conn.fetch(self._q[name], *args, timeout=QUERY_TIMEOUT_S))

    async def _fetchval(self, name: str, *args: Any) -> Any:
        with mapped_errors():
            async with self._conn() as conn:
                return await conn.fetchval(self._q[name], *args, timeout=QUERY_TIMEOUT_S)

    # -- the delivery loop ------------------------------------------------------------------

    async def claim(
        self,
        rooms: Mapping[UUID, int],
        *,
        default_room: int,
        max_rows: int,
        after: UUID | None = None,
    ) -> list[tuple[Delivery, EndpointConfig]]:
        """Lease due deliveries, at most ``rooms[endpoint]`` (or ``default_room``) per endpoint."""
        rows = await self._fetch(
            "claim", list(rooms.keys()), list(rooms.values()), default_room, max_rows, after
        )
        return [
            (
                Delivery(
                    id=r["delivery_id"],
                    lease=r["lease_token"],
                    attempt=r["attempt"],
                    endpoint_id=r["endpoint_id"],
                    event_id=r["event_id"],
                    event_type=r["event_type"],
                    body=r["body"].encode(),
                    created_at=r["created_at"],
                ),
                EndpointConfig(
                    id=r["endpoint_id"],
                    url=r["url"],
                    secrets=tuple(r["secrets"]),
                    max_in_flight=r["max_in_flight"],
                    ordering=Ordering(r["ordering"]),
                    rate_limit_per_s=r["rate_limit_per_s"],
                ),
            )
            for r in rows
        ]

    async def record(self, outcomes: Sequence[Outcome]) -> list[Recorded]:
        """Write a batch of attempt results in one call of ``record_attempts_v1``."""
        rows = await self._fetch(
            "record_attempts",
            [o.delivery_id for o in outcomes],
            [o.lease for o in outcomes],
            [o.started_at for o in outcomes],
            [o.duration_ms for o in outcomes],
            [o.status for o in outcomes],
            [o.error_kind.value if o.error_kind else None for o in outcomes],
            [_clean_text(o.error_message) for o in outcomes],
            [_clean_text(o.response_excerpt) for o in outcomes],
            [o.retry_after_s for o in outcomes],
        )
        return [
            Recorded(r["delivery_id"], r["outcome"], r["attempt"], r["next_attempt_at"])
            for r in rows
        ]

    async def release(self, deliveries: Sequence[Delivery]) -> int:
        """Give back leases of claimed deliveries that never started."""
        if not deliveries:
            return 0
        count = await self._fetchval(
            "release", [d.id for d in deliveries], [d.lease for d in deliveries]
        )
        return int(count)

    async def set_engine_waiting(self, waiting: bool) -> None:
        await self._fetchval("set_engine_waiting", waiting)

    async def next_due_at(self) -> datetime | None:
        value: datetime | None = await self._fetchval("next_due_at")
        return value

    async def policy(self) -> Policy:
        rows = await self._fetch("settings")
        row = rows[0]
        lease: timedelta = row["lease_duration"]
        return Policy(
            allow_http=row["allow_http"],
            allow_private_networks=row["allow_private_networks"],
            lease_duration_s=lease.total_seconds(),
        )

    async def maintain(self) -> dict[str, list[str]]:
        result: dict[str, list[str]] = json.loads(await self._fetchval("maintain"))
        return result

    # -- what the app, CLI and admin API call ---------------------------------------------------

    async def emit(
        self,
        account_id: str,
        event_type: str,
        payload: Mapping[str, Any],
        idempotency_key: str | None = None,
    ) -> int | None:
        """Emit an event as the app's trigger would; None when no endpoint subscribes."""
        event_id: int | None = await self._fetchval(
            "emit", account_id, event_type, json.dumps(payload), idempotency_key
        )
        return event_id

    async def create_endpoint(
        self,
        account_id: str,
        url: str,
        event_types: Sequence[str],
        *,
        description: str = "",
        secret: str | None = None,
        max_in_flight: int = 8,
        ordering: str = "dispatch",
        rate_limit_per_s: float | None = None,
    ) -> tuple[UUID, str]:
        """Register an endpoint; returns its id and its ``whsec_`` secret."""
        rows = await self._fetch(
            "create_endpoint",
            account_id,
            url,
            list(event_types),
            description,
            secret,
            max_in_flight,
            ordering,
            rate_limit_per_s,
        )
        return rows[0]["id"], rows[0]["secret"]

    async def update_endpoint(
        self,
        endpoint_id: UUID,
        *,
        url: str | None = None,
        event_types: Sequence[str] | None = None,
        description: str | None = None,
        max_in_flight: int | None = None,
        ordering: str | None = None,
        rate_limit_per_s: float | None = None,
    ) -> None:
        await self._fetchval(
            "update_endpoint",
            endpoint_id,
            url,
            list(event_types) if event_types is not None else None,
            description,
            max_in_flight,
            ordering,
            rate_limit_per_s,
        )

    async def disable_endpoint(self, endpoint_id: UUID, reason: str | None = None) -> None:
        await self._fetchval("disable_endpoint", endpoint_id, reason)

    async def enable_endpoint(self, endpoint_id: UUID) -> None:
        await self._fetchval("enable_endpoint", endpoint_id)

    async def delete_endpoint(self, endpoint_id: UUID) -> None:
        await self._fetchval("delete_endpoint", endpoint_id)

    async def rotate_secret(
        self, endpoint_id: UUID, grace: timedelta, new_secret: str | None = None
    ) -> str:
        secret: str = await self._fetchval("rotate_secret", endpoint_id, grace, new_secret)
        return secret

    async def redeliver(self, delivery_id: int) -> int:
        new_id: int = await self._fetchval("redeliver", delivery_id)
        return new_id

    async def recover(self, endpoint_id: UUID, since: datetime) -> int:
        count: int = await self._fetchval("recover", endpoint_id, since)
        return count


def _clean_text(value: str | None) -> str | None:
    """Postgres text cannot hold NUL; a hostile response body must not fail the whole batch."""
    return value.replace("\x00", "\ufffd") if value is not None else None
