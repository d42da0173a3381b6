"""The delivery queue: what the engine's delivery stage asks of Postgres.

Claim due deliveries, record attempts, give back leases that never started, say whether the engine
waits for a NOTIFY (a mark that expires unless refreshed), and the housekeeping calls (next due
time, queue depths, the hot table's vacuum, partitions and per-account retention, the settings row).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Mapping, Sequence
from datetime import datetime, timedelta
from uuid import UUID

import asyncpg

from engine.db.pool import DatabaseUnavailable, Gateway
from engine.models import (
    AttemptOutcome,
    Delivery,
    EndpointConfig,
    Ordering,
    Outcome,
    Policy,
    QueueDepths,
    Recorded,
)

# Far longer than a vacuum of the hot table after a burst takes: one that runs this long is stuck
# behind something, and autovacuum will do the work anyway. See docs/decisions/0003-idle-vacuum.md.
VACUUM_TIMEOUT_S = 300.0
# The gauges are re-counted every few seconds (metrics_refresh_s): a count that takes longer is
# stale before it lands; the gauges keep their last values, whose age a gauge of its own shows.
QUEUE_DEPTHS_TIMEOUT_S = 5.0


class DeliveryQueue(Gateway):
    """The calls of the delivery loop; see the module docstring."""

    async def claim(
        self,
        rooms: Mapping[UUID, int],
        *,
        default_room: int,
        max_rows: int,
        after: UUID | None = None,
    ) -> list[tuple[Delivery, EndpointConfig]]:
        """Lease due deliveries, at most ``rooms[endpoint]`` (or ``default_room``) per endpoint,
        and no more than each endpoint's limits allow across every engine (``claim_v2``).

        Rows come grouped by endpoint, so each endpoint's config is built once per claim, not
        once per row (a claim returns up to ``max_rows`` rows for a handful of endpoints).
        """
        rows = await self._fetch(
            "claim", list(rooms.keys()), list(rooms.values()), default_room, max_rows, after
        )
        configs: dict[UUID, EndpointConfig] = {}
        claimed = []
        for r in rows:
            endpoint_id = r["endpoint_id"]
            config = configs.get(endpoint_id)
            if config is None:
                config = configs[endpoint_id] = EndpointConfig(
                    id=endpoint_id,
                    url=r["url"],
                    secrets=tuple(r["secrets"]),
                    max_in_flight=r["max_in_flight"],
                    ordering=Ordering(r["ordering"]),
                    rate_limit_per_s=r["rate_limit_per_s"],
                    headers=json.loads(r["headers"]),
                    timeout_s=r["timeout_s"],
                )
            delivery = Delivery(
                id=r["delivery_id"],
                lease=r["lease_token"],
                attempt=r["attempt"],
                endpoint_id=endpoint_id,
                event_id=r["event_id"],
                event_type=r["event_type"],
                body=r["body"].encode(),
                created_at=r["created_at"],
                send_in_s=r["send_in_s"],
            )
            claimed.append((delivery, config))
        return claimed

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
            Recorded(
                r["delivery_id"], AttemptOutcome(r["outcome"]), r["attempt"], r["next_attempt_at"]
            )
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
        """Set (true) or clear the waiting mark that makes emit NOTIFY; see 40_claim.sql."""
        await self._fetchval("set_engine_waiting", waiting)

    async def refresh_engine_waiting(self) -> None:
        """Extend the waiting mark's expiry, unless a claim cleared the mark since."""
        await self._fetchval("refresh_engine_waiting")

    async def next_due_at(self) -> datetime | None:
        value: datetime | None = await self._fetchval("next_due_at")
        return value

    async def hot_table_dead_rows(self) -> int:
        """Dead rows in ``webhooks.deliveries`` by the statistics system, which lags behind."""
        value: int | None = await self._fetchval("hot_table_dead_rows")
        return value or 0

    async def vacuum_hot_table(self) -> list[asyncpg.PostgresLogMessage]:
        """VACUUM the hot table; returns the warnings it gave (skipped: no lock, or not allowed).

        Postgres does not fail a VACUUM it may not run, it warns and skips the table, so the
        warnings are the only answer; see engine.delivery.idle_vacuum.
        """
        warnings: list[asyncpg.PostgresLogMessage] = []

        def collect(_conn: object, message: asyncpg.PostgresLogMessage) -> None:
            if message.severity_en == "WARNING":
                warnings.append(message)

        async with self._conn() as conn:
            conn.add_log_listener(collect)
            try:
                await conn.execute(self._q["vacuum_hot_table"], timeout=VACUUM_TIMEOUT_S)
            finally:
                conn.remove_log_listener(collect)
        return warnings

    async def queue_depths(self) -> QueueDepths:
        """Live deliveries by state, for the metrics gauges (one scan of the hot table), within
        QUEUE_DEPTHS_TIMEOUT_S."""
        try:
            async with asyncio.timeout(QUEUE_DEPTHS_TIMEOUT_S):
                rows = await self._fetch("queue_depths")
        except TimeoutError as exc:  # the deadline of acquire and query together
            raise DatabaseUnavailable("the queue depths were not counted in time") from exc
        row = rows[0]
        return QueueDepths(
            due=row["due"],
            in_flight=row["in_flight"],
            retry_waiting=row["retry_waiting"],
            accepted=row["accepted"],
            notification_queue_usage=row["notification_queue_usage"],
        )

    async def policy(self) -> Policy:
        rows = await self._fetch("settings")
        row = rows[0]
        lease: timedelta = row["lease_duration"]
        return Policy(
            allow_http=row["allow_http"],
            allow_private_networks=row["allow_private_networks"],
            lease_duration_s=lease.total_seconds(),
            max_payload_bytes=row["max_payload_bytes"],
            request_timeout_s=row["request_timeout_s"],
            longest_timeout_s=row["longest_timeout_s"],
        )

    async def maintain(self) -> dict[str, list[str]]:
        result: dict[str, list[str]] = json.loads(await self._fetchval("maintain"))
        return result

    async def purge_account_retention(self, batch: int) -> int:
        """One bounded batch of per-account retention (one short transaction); rows deleted."""
        deleted: int = await self._fetchval("purge_account_retention", batch)
        return deleted


def _clean_text(value: str | None) -> str | None:
    """Postgres text cannot hold NUL; a hostile response body must not fail the whole batch."""
    return value.replace("\x00", "\ufffd") if value is not None else None
