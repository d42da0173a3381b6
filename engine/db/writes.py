"""What the app, the CLI and the admin API change: events, endpoints, redeliveries."""

from __future__ import annotations

import json
from collections.abc import Collection, Mapping, Sequence
from datetime import datetime, timedelta
from typing import Any
from uuid import UUID

import asyncpg

from engine.db.pool import Gateway
from engine.errors import InvalidInput
from engine.models import ENDPOINT_DEFAULTS, EndpointOptions


class AdminWrites(Gateway):
    """Emit, endpoint management, secret rotation, redeliver and recover."""

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
        options: EndpointOptions = ENDPOINT_DEFAULTS,
        *,
        secret: str | None = None,
    ) -> tuple[UUID, str]:
        """Register an endpoint, with the defaults for what ``options`` does not give; returns its
        id and its ``whsec_`` secret (generated unless ``secret``)."""
        full = options.with_defaults()
        rows = await self._fetch(
            "create_endpoint",
            account_id,
            url,
            _text_array(full.event_types),
            full.description,
            secret,
            full.max_in_flight,
            full.ordering,
            full.rate_limit_per_s,
            *_policy(full),
        )
        return rows[0]["id"], rows[0]["secret"]

    async def update_endpoint(
        self,
        endpoint_id: UUID,
        changes: EndpointOptions,
        *,
        url: str | None = None,
        reset: Collection[str] = (),
    ) -> None:
        """Change the URL if given and the settings ``changes`` gives; put the policies named in
        ``reset`` (of :data:`~engine.models.RESETTABLE`) back to their defaults; the rest stays."""
        await self._fetchval(
            "update_endpoint",
            endpoint_id,
            url,
            _text_array(changes.event_types),
            changes.description,
            changes.max_in_flight,
            changes.ordering,
            changes.rate_limit_per_s,
            *_policy(changes),
            list(reset) or None,
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

    async def send_test(self, endpoint_id: UUID, event_type: str) -> int:
        """Send the catalogue's example of ``event_type`` to one endpoint as a test event;
        returns the new delivery's id."""
        new_id: int = await self._fetchval("send_test", endpoint_id, event_type)
        return new_id


def _text_array(items: Sequence[str] | None) -> list[str] | None:
    """The list asyncpg sends as a text[]; from an untyped caller's string, a list of letters
    (which SQL refuses as unknown event types), as from any other sequence."""
    return list(items) if items is not None else None


def _policy(
    options: EndpointOptions,
) -> tuple[str | None, str | None, list[timedelta] | None, int | None]:
    """The per-endpoint policy as create_endpoint's and update_endpoint's last four parameters:
    headers as JSON text, the filter as text (SQL parses it, naming the field when it is not a
    path), the schedule as a list of intervals."""
    return (
        json.dumps(dict(options.headers)) if options.headers is not None else None,
        options.filter,
        list(options.retry_schedule) if options.retry_schedule is not None else None,
        options.timeout_s,
    )
