"""Values passed between the engine's parts. Pure: no I/O, no asyncio."""

from __future__ import annotations

import dataclasses
import enum
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any
from uuid import UUID


class Ordering(enum.StrEnum):
    """Per-endpoint ordering (DESIGN §4)."""

    DISPATCH = "dispatch"
    STRICT = "strict"


class AttemptOutcome(enum.StrEnum):
    """What recording an attempt did with its delivery: the outcomes ``record_attempts_v1`` returns
    and ``webhooks.attempts.outcome`` holds."""

    DELIVERED = "delivered"  # a 2xx: the delivery ended
    RETRY = "retry"  # another attempt is scheduled
    FAILED = "failed"  # out of attempts, or the endpoint is gone: the delivery ended
    STALE = "stale"  # the lease had been lost; the result was not counted


# endpoints.max_in_flight's column default; the dispatcher sizes claims for an endpoint it has no
# actor for yet by it. tests/integration/test_catalogue.py holds it equal to the column default.
DEFAULT_MAX_IN_FLIGHT = 8
MAX_IN_FLIGHT_BOUNDS = (1, 256)  # what the endpoints table's CHECK allows
# An endpoint's own request timeout (endpoints.timeout_s, settings.request_timeout_s), in seconds.
TIMEOUT_S_BOUNDS = (1, 30)
DEFAULT_TIMEOUT_S = 10  # settings.request_timeout_s's column default (test_catalogue)
# Custom headers: at most this many, and this many bytes of names and values in all
# (webhooks.check_headers; tests/integration/test_endpoint_policy_sql.py holds them equal).
MAX_HEADERS = 10
MAX_HEADER_BYTES = 4096
MAX_RETRY_DELAYS = 20  # settings.retry_schedule's CHECK, and an endpoint's
# The header names the engine sets on every attempt (engine/delivery/request.py builds them) and
# those whose framing aiohttp owns, lower-cased: a custom header may take none of them. SQL states
# the same lists (webhooks.reserved_header_names/_prefixes, refused by webhooks.check_headers);
# tests/integration/test_catalogue.py holds them equal, and tests/unit/test_request.py checks
# that every header request.py sets is reserved.
RESERVED_HEADER_NAMES = (
    "content-type",
    "content-length",
    "host",
    "user-agent",
    "transfer-encoding",
    "connection",
)
RESERVED_HEADER_PREFIXES = ("webhook-", "x-misarmail-")


def is_reserved_header(name: str) -> bool:
    """Whether a custom header may not be called ``name`` (any case)."""
    lowered = name.lower()
    return lowered in RESERVED_HEADER_NAMES or lowered.startswith(RESERVED_HEADER_PREFIXES)


# What update_endpoint can put back to its default (webhooks.update_endpoint's p_reset).
RESETTABLE = ("headers", "filter", "retry_schedule", "timeout_s")


@dataclass(frozen=True, slots=True)
class EndpointOptions:
    """An endpoint's settings besides its account, URL and secret, as the admin API, the CLI and
    the store pass them. A field left None is not given: a new endpoint takes the default of
    :data:`ENDPOINT_DEFAULTS`, an update leaves the setting as it is. ``rate_limit_per_s`` 0 means
    no limit (how an update removes one).

    The per-endpoint policy: ``headers`` are sent with every attempt (their values are secrets:
    never logged, masked in reads); ``filter`` is a SQL/JSON path predicate on the payload (only
    matching events are delivered); ``retry_schedule`` and ``timeout_s`` override the settings'.
    An update replaces all headers at once; :data:`RESETTABLE` names what an update can put back
    to its default."""

    description: str | None = None
    event_types: tuple[str, ...] | None = None
    max_in_flight: int | None = None
    ordering: Ordering | None = None
    rate_limit_per_s: float | None = None
    headers: Mapping[str, str] | None = None
    filter: str | None = None
    retry_schedule: tuple[timedelta, ...] | None = None
    timeout_s: int | None = None

    def given(self) -> dict[str, Any]:
        """The settings given, by name."""
        return {
            f.name: getattr(self, f.name)
            for f in dataclasses.fields(self)
            if getattr(self, f.name) is not None
        }

    def with_defaults(self) -> EndpointOptions:
        """These settings, each one not given taken from :data:`ENDPOINT_DEFAULTS`."""
        return dataclasses.replace(ENDPOINT_DEFAULTS, **self.given())


ENDPOINT_DEFAULTS = EndpointOptions(
    description="",
    event_types=("*",),
    max_in_flight=DEFAULT_MAX_IN_FLIGHT,
    ordering=Ordering.DISPATCH,
    rate_limit_per_s=None,  # no limit
    headers={},
    filter=None,  # every event
    retry_schedule=None,  # settings.retry_schedule
    timeout_s=None,  # settings.request_timeout_s
)

# How long a rotated-out secret keeps signing: webhooks.rotate_secret's default and its limit.
DEFAULT_ROTATION_GRACE = timedelta(hours=24)
MAX_ROTATION_GRACE = timedelta(days=30)


class ErrorKind(enum.StrEnum):
    """Why an attempt failed, when it did not get an HTTP status (or got a refused one)."""

    HTTP_STATUS = "http_status"  # a response arrived but was not 2xx
    REDIRECT = "redirect"  # 3xx: never followed
    TIMEOUT = "timeout"
    CONNECT = "connect"  # refused, reset or unreachable while connecting
    DNS = "dns"
    TLS = "tls"
    BLOCKED_ADDRESS = "blocked_address"  # SSRF guard: resolves to a non-public address
    INSECURE_URL = "insecure_url"  # http:// while allow_http is off
    INVALID_URL = "invalid_url"
    PROTOCOL = "protocol"  # invalid HTTP, oversized headers, connection dropped mid-response
    DISCONNECTED = "disconnected"
    SHUTDOWN = "shutdown"  # the engine stopped while the attempt was in flight
    INTERNAL = "internal"  # a bug of ours; recorded so the delivery is retried, not lost


@dataclass(frozen=True, slots=True)
class EndpointConfig:
    """An endpoint as the engine needs it to deliver; refreshed from every claim."""

    id: UUID
    url: str
    secrets: tuple[str, ...]
    max_in_flight: int
    ordering: Ordering
    rate_limit_per_s: float | None
    # Sent with every attempt; the values are secrets (never logged).
    headers: Mapping[str, str] = dataclasses.field(default_factory=dict, repr=False)
    timeout_s: float = (
        DEFAULT_TIMEOUT_S  # the request timeout in force: the endpoint's, else the settings'
    )


@dataclass(frozen=True, slots=True)
class Delivery:
    """A claimed delivery: what to send, and the lease that fences its result."""

    id: int
    lease: UUID
    attempt: int
    endpoint_id: UUID
    event_id: int
    event_type: str
    body: bytes
    created_at: datetime  # when the delivery was written (the app's commit, for latency)
    # Seconds from the claim until the attempt may start: the endpoint's rate limit, scheduled by
    # the claim across every engine (0 without a rate limit). See sql/functions/40_claim.sql.
    send_in_s: float = 0.0

    @property
    def webhook_id(self) -> str:
        """Stable per event (and so per event and endpoint) across attempts, for receiver dedup."""
        return f"evt_{self.event_id}"


@dataclass(frozen=True, slots=True)
class Outcome:
    """The result of one HTTP attempt. Senders return it; they never raise for a failed delivery.

    ``status`` is 0 when no HTTP response arrived. ``retry_after_s`` is the parsed ``Retry-After``
    (429/503 only), which SQL clamps to [delay, 2 x delay].
    """

    delivery_id: int
    lease: UUID
    started_at: datetime
    duration_ms: int
    status: int
    error_kind: ErrorKind | None = None
    error_message: str | None = None
    response_excerpt: str | None = None
    retry_after_s: float | None = None

    @property
    def succeeded(self) -> bool:
        return 200 <= self.status <= 299


@dataclass(frozen=True, slots=True)
class Policy:
    """The row of ``webhooks.settings`` the engine acts on (SQL reads the same row)."""

    allow_http: bool
    allow_private_networks: bool
    lease_duration_s: float
    max_payload_bytes: int  # the admin API sizes its request-body limit from it
    request_timeout_s: float = DEFAULT_TIMEOUT_S  # for endpoints without a timeout of their own
    longest_timeout_s: float = DEFAULT_TIMEOUT_S  # the longest in force, endpoints' included


@dataclass(frozen=True, slots=True)
class Recorded:
    """What ``record_attempts_v1`` did with one result."""

    delivery_id: int
    outcome: AttemptOutcome
    attempt: int | None
    next_attempt_at: datetime | None


@dataclass(frozen=True, slots=True)
class QueueDepths:
    """Live deliveries by state, and the share of Postgres's NOTIFY queue in use (0..1).

    ``due``: claimable now (new, a retry whose time came, or a lease that expired); ``in_flight``:
    leased and the lease still running; ``retry_waiting``: waiting for a scheduled retry;
    ``accepted``: events accepted by emit that wait in the intake for a claim to fan them out
    (their deliveries do not exist yet).
    """

    due: int
    in_flight: int
    retry_waiting: int
    accepted: int
    notification_queue_usage: float
