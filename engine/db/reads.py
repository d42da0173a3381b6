"""The delivery log and the endpoint list as the CLI and the admin API read them."""

from __future__ import annotations

import json
from datetime import datetime
from uuid import UUID

import asyncpg

from engine.db.keys import (
    DEFAULT_PAGE,
    DELIVERIES,
    ENDPOINTS,
    check_page_size,
    decode_delivery_cursor,
    decode_endpoint_cursor,
    encode_cursor,
)
from engine.db.pool import QUERY_TIMEOUT_S, Gateway, mapped_errors
from engine.db.read_models import (
    AcceptedEvents,
    AttemptView,
    DeliveryDetail,
    DeliveryStatus,
    DeliveryView,
    EndpointView,
    EventTypeView,
    Page,
    RecentAttempt,
)
from engine.errors import UnknownDelivery, UnknownEndpoint
from engine.models import AttemptOutcome, Ordering


class DeliveryLogReads(Gateway):
    """Endpoints, deliveries and attempts, as pages of read models."""

    async def get_endpoint(
        self, endpoint_id: UUID, *, reveal_secret: bool = False, account_id: str | None = None
    ) -> EndpointView:
        """One endpoint; its secrets stay masked unless ``reveal_secret``. UnknownEndpoint if it
        does not exist, was deleted, or (with ``account_id``) belongs to another account: the
        same answer, so that a scoped caller cannot learn that another account's id exists."""
        rows = await self._fetch("get_endpoint", endpoint_id, reveal_secret)
        endpoint = _endpoint(rows[0])
        if account_id is not None and endpoint.account_id != account_id:
            raise UnknownEndpoint(f"endpoint_id: no endpoint {endpoint_id}", field="endpoint_id")
        return endpoint

    async def list_endpoints(
        self,
        *,
        account_id: str | None = None,
        enabled: bool | None = None,
        limit: int = DEFAULT_PAGE,
        cursor: str | None = None,
    ) -> Page[EndpointView]:
        """Endpoints that are not deleted, oldest first, secrets masked."""
        after_created, after_id = None, None
        if cursor is not None:
            after_created, after_id = decode_endpoint_cursor(cursor)
        rows = await self._fetch(
            "list_endpoints",
            account_id,
            enabled,
            after_created,
            after_id,
            check_page_size(limit) + 1,
        )
        items = tuple(_endpoint(r) for r in rows[:limit])
        last = items[-1] if len(rows) > limit else None
        return Page(items, encode_cursor(ENDPOINTS, last.created_at, last.id) if last else None)

    async def get_delivery(
        self, delivery_id: int, *, account_id: str | None = None
    ) -> DeliveryDetail:
        """A delivery-log row, every attempt and the event's payload; UnknownDelivery if none, or
        (with ``account_id``) if it is another account's, as :meth:`get_endpoint` does."""
        with mapped_errors():
            async with self._conn() as conn:
                row = await conn.fetchrow(
                    self._q["get_delivery"], delivery_id, timeout=QUERY_TIMEOUT_S
                )
                attempts = await conn.fetch(
                    self._q["delivery_attempts"], delivery_id, timeout=QUERY_TIMEOUT_S
                )
        if row is None or (account_id is not None and row["account_id"] != account_id):
            # get_delivery_v2 raises WH005 for a missing row; None keeps the types honest.
            raise UnknownDelivery(f"delivery_id: no delivery {delivery_id}", field="delivery_id")
        payload = json.loads(row["payload"]) if row["payload"] is not None else None
        return DeliveryDetail(_delivery(row), tuple(_attempt(a) for a in attempts), payload)

    async def list_deliveries(
        self,
        *,
        status: DeliveryStatus | None = None,
        endpoint_id: UUID | None = None,
        event_type: str | None = None,
        since: datetime | None = None,
        account_id: str | None = None,
        limit: int = DEFAULT_PAGE,
        cursor: str | None = None,
    ) -> Page[DeliveryView]:
        """The delivery log, newest first; ``since`` keeps deliveries created at or after it."""
        before_created, before_id = None, None
        if cursor is not None:
            before_created, before_id = decode_delivery_cursor(cursor)
        rows = await self._fetch(
            "list_deliveries",
            status.value if status is not None else None,
            endpoint_id,
            event_type,
            since,
            account_id,
            before_created,
            before_id,
            check_page_size(limit) + 1,
        )
        items = tuple(_delivery(r) for r in rows[:limit])
        last = items[-1] if len(rows) > limit else None
        return Page(
            items, encode_cursor(DELIVERIES, last.created_at, last.delivery_id) if last else None
        )

    async def attempts_after(
        self,
        after_id: int,
        *,
        up_to: int | None = None,
        endpoint_id: UUID | None = None,
        event_type: str | None = None,
        account_id: str | None = None,
        limit: int = 500,
    ) -> list[RecentAttempt]:
        """Attempts with an id above ``after_id`` (and at most ``up_to``), oldest first: what
        ``deliveries tail`` polls, starting from :meth:`last_attempt_id`."""
        rows = await self._fetch(
            "attempts_after",
            after_id,
            up_to,
            endpoint_id,
            event_type,
            account_id,
            check_page_size(limit),
        )
        return [
            RecentAttempt(_attempt(r), r["event_type"], r["endpoint_url"], r["account_id"])
            for r in rows
        ]

    async def list_event_types(self, *, account_id: str | None = None) -> list[EventTypeView]:
        """The event catalogue; with ``account_id``, the types that account can receive."""
        rows = await self._fetch("list_event_types", account_id)
        return [
            EventTypeView(
                name=r["name"],
                description=r["description"],
                schema=json.loads(r["schema"]),
                example=json.loads(r["example"]),
                operational=r["operational"],
            )
            for r in rows
        ]

    async def accepted_events(self, *, account_id: str | None = None) -> AcceptedEvents:
        """Accepted events that have no deliveries yet, of one account or of all."""
        rows = await self._fetch("accepted_events", account_id)
        return AcceptedEvents(rows[0]["events"], rows[0]["oldest_accepted_at"])

    async def last_attempt_id(self) -> int:
        """The highest attempt id so far (0 when there is none): where a ``tail`` starts."""
        value: int = await self._fetchval("last_attempt_id")
        return value


def _endpoint(r: asyncpg.Record) -> EndpointView:
    return EndpointView(
        id=r["id"],
        account_id=r["account_id"],
        url=r["url"],
        description=r["description"],
        event_types=tuple(r["event_types"]),
        secret=r["secret"],
        previous_secret=r["previous_secret"],
        previous_secret_expires_at=r["previous_secret_expires_at"],
        enabled=r["enabled"],
        disabled_at=r["disabled_at"],
        disabled_reason=r["disabled_reason"],
        max_in_flight=r["max_in_flight"],
        ordering=Ordering(r["ordering"]),
        rate_limit_per_s=r["rate_limit_per_s"],
        last_success_at=r["last_success_at"],
        failing_since=r["failing_since"],
        created_at=r["created_at"],
        updated_at=r["updated_at"],
        headers=json.loads(r["headers"]),
        filter=r["filter"],
        retry_schedule=tuple(r["retry_schedule"]) if r["retry_schedule"] is not None else None,
        timeout_s=r["timeout_s"],
    )


def _delivery(r: asyncpg.Record) -> DeliveryView:
    return DeliveryView(
        delivery_id=r["delivery_id"],
        event_id=r["event_id"],
        event_type=r["event_type"],
        endpoint_id=r["endpoint_id"],
        account_id=r["account_id"],
        endpoint_url=r["endpoint_url"],
        status=DeliveryStatus(r["status"]),
        attempts=r["attempts"],
        last_status_code=r["last_status_code"],
        last_error=r["last_error"],
        created_at=r["created_at"],
        last_attempt_at=r["last_attempt_at"],
        next_attempt_at=r["next_attempt_at"],
        ended_at=r["ended_at"],
        test=r["test"],
    )


def _attempt(r: asyncpg.Record) -> AttemptView:
    return AttemptView(
        id=r["id"],
        delivery_id=r["delivery_id"],
        endpoint_id=r["endpoint_id"],
        attempt=r["attempt"],
        started_at=r["started_at"],
        duration_ms=r["duration_ms"],
        status_code=r["status_code"],
        error_kind=r["error_kind"],
        error_message=r["error_message"],
        response_excerpt=r["response_excerpt"],
        outcome=AttemptOutcome(r["outcome"]),
        next_attempt_at=r["next_attempt_at"],
    )
