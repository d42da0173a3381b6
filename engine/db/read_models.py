"""What the read side of the store returns to the CLI and the admin API. Pure: no I/O.

Every value is a frozen dataclass. Lists come as a :class:`Page` with an opaque ``next_cursor``
(see :mod:`engine.db.keys`).
"""

from __future__ import annotations

import dataclasses
import enum
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Generic, TypeVar
from uuid import UUID

from engine.models import AttemptOutcome, Ordering

T = TypeVar("T")


class DeliveryStatus(enum.StrEnum):
    """A delivery's status as ``webhooks.delivery_log`` shows it."""

    PENDING = "pending"
    IN_FLIGHT = "in_flight"
    RETRYING = "retrying"
    DELIVERED = "delivered"
    FAILED = "failed"
    CANCELLED = "cancelled"


@dataclass(frozen=True, slots=True)
class Page(Generic[T]):
    """One page of a list; ``next_cursor`` is None on the last page."""

    items: tuple[T, ...]
    next_cursor: str | None


@dataclass(frozen=True, slots=True)
class EndpointView:
    """An endpoint as operators see it. ``secret`` is masked (``whsec_abcd…``) unless revealed;
    ``previous_secret`` is set only while a rotation's grace period lasts."""

    id: UUID
    account_id: str
    url: str
    description: str
    event_types: tuple[str, ...]
    secret: str
    previous_secret: str | None
    previous_secret_expires_at: datetime | None
    enabled: bool
    disabled_at: datetime | None
    disabled_reason: str | None
    max_in_flight: int
    ordering: Ordering
    rate_limit_per_s: float | None
    last_success_at: datetime | None
    failing_since: datetime | None
    created_at: datetime
    updated_at: datetime
    headers: Mapping[str, str]  # values masked ('***') unless revealed, like the secret
    filter: str | None
    retry_schedule: tuple[timedelta, ...] | None  # None: the settings'
    timeout_s: int | None  # None: the settings'


@dataclass(frozen=True, slots=True)
class DeliveryView:
    """One row of ``webhooks.delivery_log``: a delivery, live or ended."""

    delivery_id: int
    event_id: int
    event_type: str
    endpoint_id: UUID
    account_id: str
    endpoint_url: str
    status: DeliveryStatus
    attempts: int
    last_status_code: int | None
    last_error: str | None
    created_at: datetime
    last_attempt_at: datetime | None
    next_attempt_at: datetime | None
    ended_at: datetime | None
    test: bool  # a test event's delivery (webhooks.send_test)


@dataclass(frozen=True, slots=True)
class AttemptView:
    """One HTTP attempt. ``status_code`` is 0 when no response arrived."""

    id: int
    delivery_id: int
    endpoint_id: UUID
    attempt: int
    started_at: datetime
    duration_ms: int
    status_code: int
    error_kind: str | None
    error_message: str | None
    response_excerpt: str | None
    outcome: AttemptOutcome
    next_attempt_at: datetime | None


@dataclass(frozen=True, slots=True)
class DeliveryDetail:
    """A delivery with every attempt, oldest first, and the event's payload (None once the event
    has passed retention)."""

    delivery: DeliveryView
    attempts: tuple[AttemptView, ...]
    payload: Mapping[str, Any] | None


@dataclass(frozen=True, slots=True)
class EventTypeView:
    """One entry of the event catalogue: ``schema`` is the JSON Schema of the event's ``data``,
    ``example`` a ``data`` that matches it (what a test event sends). ``operational`` types go to
    the operator's account only (endpoint trouble), never to a customer's."""

    name: str
    description: str
    schema: Mapping[str, Any]
    example: Mapping[str, Any]
    operational: bool


@dataclass(frozen=True, slots=True)
class AcceptedEvents:
    """Events accepted from the app and not yet turned into deliveries (they wait in the intake
    until an engine fans them out): how many, and since when the oldest has waited."""

    events: int
    oldest_accepted_at: datetime | None


@dataclass(frozen=True, slots=True)
class RecentAttempt:
    """An attempt with what a live feed shows beside it (``deliveries tail``)."""

    attempt: AttemptView
    event_type: str | None
    endpoint_url: str
    account_id: str


def jsonable(value: Any) -> Any:
    """Plain JSON values of views: datetimes as ISO 8601, UUIDs as strings, tuples as lists,
    durations as seconds."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: jsonable(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, UUID):
        return str(value)
    if isinstance(value, timedelta):
        return value.total_seconds()
    if isinstance(value, Mapping):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [jsonable(v) for v in value]
    return value
