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

from engine.db.read_models import (
    AttemptView,
    DeliveryDetail,
    DeliveryStatus,
    DeliveryView,
    EndpointView,
    Page,
    RecentAttempt,
    check_limit,
    decode_cursor,
    encode_cursor,
)
from engine.db.sqlfiles import queries
from engine.errors import InvalidInput, UnknownDelivery, from_sqlstate
from engine.models import (
    Delivery,
    EndpointConfig,
    Ordering,
    Outcome,
    Policy,
    QueueDepths,
    Recorded,
)

QUERY_TIMEOUT_S = 30.0
# What the engine's periodic tasks (maintenance, gauges, settings, the idle vacuum) wait out: the
# database away, or one statement failing. They log it and try again at their next period. The
# result writer waits out a narrower set (engine.delivery.writer), because its failures must not
# be bugs.
PERIODIC_CALL_ERRORS = (OSError, asyncpg.PostgresError, asyncpg.InterfaceError, TimeoutError)
# A new connection to a Postgres beside us takes milliseconds; one that takes seconds is going to
# a database that is away (a partition answers nothing), and the caller should learn that soon.
CONNECT_TIMEOUT_S = 5.0
# Vacuuming the hot table after 60,000 deliveries (117,500 dead rows) took 46 ms on PG15 here; one
# that runs this long is stuck behind something, and autovacuum will do the work anyway.
VACUUM_TIMEOUT_S = 300.0


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


class DatabaseUnavailable(ConnectionError):
    """The database server refused a new connection, or closed one under a query.

    A ConnectionError (an OSError) because that is what every part that waits out a lost database
    catches: the result writer, the dispatcher, the periodic tasks, the admin API (503).
    """


@contextmanager
def _closed_under_us(conn: asyncpg.pool.PoolConnectionProxy) -> Iterator[None]:
    """When the server ends a connection under a query (pg_terminate_backend, a restart),
    asyncpg sometimes reports it as InternalClientError ("cannot switch to state ...") instead of
    a connection error; the closed connection tells the two apart."""
    try:
        yield
    except asyncpg.InternalClientError as exc:
        if conn.is_closed():
            raise DatabaseUnavailable("the database closed the connection") from exc
        raise


async def open_engine_pool(
    url: str, size: int, *, connect_timeout_s: float = CONNECT_TIMEOUT_S
) -> asyncpg.Pool:
    """The engine's pool: connections open within a deadline and go back without a round trip.

    asyncpg's default connect deadline is 60 s. In a network partition the result writer's next
    write, reconnecting through the pool, then hung until the acquire's own deadline
    (QUERY_TIMEOUT_S, 30 s) before the writer knew the database was away; the 10 s partition
    fault test failed that way whenever the cut found the writer between two writes.

    asyncpg's default reset sends ``pg_advisory_unlock_all(); CLOSE ALL; UNLISTEN *; RESET ALL``
    to the server on every release, a second round trip for each of our one-statement calls: 11 %
    of the engine's samples in bench W2 (py-spy). The engine leaves nothing there to undo: its SQL
    functions scope their settings (SET clauses, ``set_config(..., true)``), the migration runner
    unlocks its advisory lock, the listener LISTENs on a connection of its own, and nothing opens
    a cursor. asyncpg still rolls back a transaction left open, before calling this reset.
    """
    return await asyncpg.create_pool(
        url,
        min_size=2,
        max_size=size,
        command_timeout=60,
        timeout=connect_timeout_s,
        reset=_keep_session,
    )


async def _keep_session(conn: asyncpg.Connection) -> None:
    """Nothing to reset; see open_engine_pool."""


class Store:
    """Typed access to the webhooks schema through an asyncpg pool owned by the caller."""

    def __init__(self, pool: asyncpg.Pool) -> None:
        self.pool = pool
        self._q = queries()

    @asynccontextmanager
    async def _conn(self) -> AsyncIterator[asyncpg.pool.PoolConnectionProxy]:
        try:
            conn = await self.pool.acquire(timeout=QUERY_TIMEOUT_S)
        except asyncpg.PostgresError as exc:
            # Raised while the pool opened a connection, so the server refused it (e.g. too
            # many clients, ALLOW_CONNECTIONS false): the database is away, the query is fine.
            raise DatabaseUnavailable(f"the database refused a connection: {exc}") from exc
        try:
            with _closed_under_us(conn):
                yield conn
        finally:
            try:
                await self.pool.release(conn)
            except asyncpg.InternalClientError as exc:
                # Its reset failed the same way; the pool has already dropped the connection.
                raise DatabaseUnavailable("the database closed the connection") from exc

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
        """Lease due deliveries, at most ``rooms[endpoint]`` (or ``default_room``) per endpoint.

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

    async def hot_table_dead_rows(self) -> int:
        """Dead rows in ``webhooks.deliveries`` by the statistics system (up to 10 s behind)."""
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
        """Live deliveries by state, for the metrics gauges (one scan of the hot table)."""
        row = (await self._fetch("queue_depths"))[0]
        return QueueDepths(
            due=row["due"],
            in_flight=row["in_flight"],
            retry_waiting=row["retry_waiting"],
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
        """Emit an event as the app's trigger would; None when no endpoint subscribes.

        A payload that is not JSON (NaN, bytes, sets, nested beyond what ``json`` can encode) or
        holds text Postgres cannot store (NUL, unpaired surrogates) raises InvalidInput for
        ``payload``, like the checks in SQL, never an encoder's or the JSON parser's error.
        """
        try:
            body = json.dumps(payload, allow_nan=False)
        except (TypeError, ValueError, RecursionError) as exc:
            raise InvalidInput(
                f"payload: cannot be encoded as JSON: {exc}", field="payload"
            ) from None
        try:
            event_id: int | None = await self._fetchval(
                "emit", account_id, event_type, body, idempotency_key
            )
        except (
            asyncpg.UntranslatableCharacterError,
            asyncpg.InvalidTextRepresentationError,
        ) as exc:
            # Postgres parses only the payload here: a \u0000 or an unpaired surrogate in a string.
            raise InvalidInput(f"payload: {exc.args[0]} ({exc.detail})", field="payload") from exc
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

    # -- reads for the CLI and the admin API ---------------------------------------------------

    async def get_endpoint(self, endpoint_id: UUID, *, reveal_secret: bool = False) -> EndpointView:
        """One endpoint; its secrets stay masked unless ``reveal_secret``. UnknownEndpoint if it
        does not exist or was deleted."""
        rows = await self._fetch("get_endpoint", endpoint_id, reveal_secret)
        return _endpoint(rows[0])

    async def list_endpoints(
        self,
        *,
        account_id: str | None = None,
        enabled: bool | None = None,
        limit: int = 50,
        cursor: str | None = None,
    ) -> Page[EndpointView]:
        """Endpoints that are not deleted, oldest first, secrets masked."""
        after_created, after_id = None, None
        if cursor is not None:
            after_created, after_id = decode_cursor("e", cursor, UUID)
        rows = await self._fetch(
            "list_endpoints", account_id, enabled, after_created, after_id, check_limit(limit) + 1
        )
        items = tuple(_endpoint(r) for r in rows[:limit])
        last = items[-1] if len(rows) > limit else None
        return Page(items, encode_cursor("e", last.created_at, last.id) if last else None)

    async def get_delivery(self, delivery_id: int) -> DeliveryDetail:
        """A delivery-log row, every attempt and the event's payload; UnknownDelivery if none."""
        with mapped_errors():
            async with self._conn() as conn:
                row = await conn.fetchrow(
                    self._q["get_delivery"], delivery_id, timeout=QUERY_TIMEOUT_S
                )
                attempts = await conn.fetch(
                    self._q["delivery_attempts"], delivery_id, timeout=QUERY_TIMEOUT_S
                )
        if row is None:  # get_delivery_v1 raises WH005 instead; this keeps the types honest
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
        limit: int = 50,
        cursor: str | None = None,
    ) -> Page[DeliveryView]:
        """The delivery log, newest first; ``since`` keeps deliveries created at or after it."""
        before_created, before_id = None, None
        if cursor is not None:
            before_created, before_id = decode_cursor("d", cursor, int)
        rows = await self._fetch(
            "list_deliveries",
            status.value if status is not None else None,
            endpoint_id,
            event_type,
            since,
            account_id,
            before_created,
            before_id,
            check_limit(limit) + 1,
        )
        items = tuple(_delivery(r) for r in rows[:limit])
        last = items[-1] if len(rows) > limit else None
        return Page(items, encode_cursor("d", last.created_at, last.delivery_id) if last else None)

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
            check_limit(limit),
        )
        return [
            RecentAttempt(_attempt(r), r["event_type"], r["endpoint_url"], r["account_id"])
            for r in rows
        ]

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
        ordering=r["ordering"],
        rate_limit_per_s=r["rate_limit_per_s"],
        last_success_at=r["last_success_at"],
        failing_since=r["failing_since"],
        created_at=r["created_at"],
        updated_at=r["updated_at"],
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
        outcome=r["outcome"],
        next_attempt_at=r["next_attempt_at"],
    )


def _clean_text(value: str | None) -> str | None:
    """Postgres text cannot hold NUL; a hostile response body must not fail the whole batch."""
    return value.replace("\x00", "\ufffd") if value is not None else None
