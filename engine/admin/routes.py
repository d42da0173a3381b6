"""The admin HTTP API under ``/v1``: endpoints, emit, deliveries; and its OpenAPI document.

``engine/admin/openapi.json`` describes every route of the admin app, this module's and
:mod:`engine.admin.server`'s, and is served as it is checked in at ``GET /openapi.json`` (no
token: it is public in the repository anyway). The e2e tests validate every response against it.

Requests are parsed strictly by :mod:`engine.admin.parsing`; the store's errors become JSON errors
here (:func:`store_errors`): 400 ``invalid_field`` / ``unknown_event_type``, 413
``payload_too_large``, 404 ``not_found``, 409 ``conflict``, and 503 ``unavailable`` while the
database cannot be reached. Secrets leave only in the answers to create, rotate-secret and
``GET /v1/endpoints/{id}?reveal_secret=true``; everywhere else they are masked by SQL.
"""

from __future__ import annotations

import dataclasses
import functools
import re
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta
from importlib import resources
from typing import Any
from uuid import UUID

import structlog
from aiohttp import web

from engine.admin.access import scope_of
from engine.admin.parsing import (
    Body,
    Query,
    delivery_id,
    endpoint_id,
    invalid,
    json_body,
    need,
    no_query,
)
from engine.admin.server import CONTEXT, ApiError
from engine.db import keys
from engine.db.pool import DatabaseUnavailable
from engine.db.read_models import AcceptedEvents, DeliveryStatus, Page, jsonable
from engine.db.store import Store
from engine.errors import (
    Conflict,
    EngineError,
    InvalidInput,
    NotFound,
    PayloadTooLarge,
    UnknownEventType,
)
from engine.models import (
    DEFAULT_ROTATION_GRACE,
    MAX_HEADERS,
    MAX_IN_FLIGHT_BOUNDS,
    MAX_RETRY_DELAYS,
    MAX_ROTATION_GRACE,
    RESETTABLE,
    TIMEOUT_S_BOUNDS,
    EndpointOptions,
    Ordering,
)

log = structlog.get_logger("engine.admin.routes")

routes = web.RouteTableDef()

ORDERINGS = tuple(o.value for o in Ordering)
STATUSES = tuple(s.value for s in DeliveryStatus)
MAX_RATE_PER_S = 1e6
MAX_FILTER = 2000  # characters, as webhooks.check_filter allows
MAX_DELAY_S = 30 * 86400.0  # one delay of a retry schedule: the API's bound (SQL has none)
ENDPOINT_OPTIONS = tuple(f.name for f in dataclasses.fields(EndpointOptions))
# "whsec_" and the standard base64 of a 24 to 64 byte key (what webhooks.check_secret accepts).
SECRET = re.compile(
    r"whsec_(?:(?:[A-Za-z0-9+/]{4}){8,20}(?:[A-Za-z0-9+/]{2}==|[A-Za-z0-9+/]{3}=)?"
    r"|(?:[A-Za-z0-9+/]{4}){21}(?:[A-Za-z0-9+/]{2}==)?)"
)


def body_limit(max_payload_bytes: int) -> int:
    """The request-body limit for ``create_app``: room for a payload at the database's limit
    written with escapes and whitespace (JSON text can be twice the stored size), plus the
    other fields. A payload between the two gets the database's precise 413 naming ``payload``."""
    return 2 * max_payload_bytes + 64 * 1024


@contextmanager
def store_errors(**fields: str) -> Iterator[None]:
    """Answer the store's errors as JSON errors; ``fields`` renames SQL columns to API names.

    The SQL messages start with the column (``"endpoint_id: no endpoint …"``), so a renamed
    column is renamed in the message too.
    """
    try:
        yield
    except DatabaseUnavailable as exc:  # an EngineError too, but not the client's: 503, try again
        log.warning("admin_database_unavailable", error=str(exc))
        raise ApiError(
            503, "unavailable", "the database is unreachable; try again shortly"
        ) from exc
    except EngineError as exc:
        column = exc.field
        field = fields.get(column, column) if column is not None else None
        message = str(exc)
        if column is not None and field != column and message.startswith(f"{column}:"):
            message = f"{field}{message[len(column) :]}"
        status, code = _error_code(exc)
        raise ApiError(status, code, message, field=field) from exc


def _error_code(exc: EngineError) -> tuple[int, str]:
    if isinstance(exc, UnknownEventType):
        return 400, "unknown_event_type"
    if isinstance(exc, PayloadTooLarge):
        return 413, "payload_too_large"
    if isinstance(exc, InvalidInput):
        return 400, "invalid_field"
    if isinstance(exc, NotFound):
        return 404, "not_found"
    if isinstance(exc, Conflict):
        return 409, "conflict"
    raise exc  # not a client's mistake: logged and answered 500 by the admin middleware


def _store(request: web.Request) -> Store:
    return request.app[CONTEXT].store


def _json(value: Any, status: int = 200, location: str | None = None) -> web.Response:
    headers = {"Location": location} if location is not None else None
    return web.json_response(jsonable(value), status=status, headers=headers)


def _page(page: Page[Any]) -> web.Response:
    return _json({"data": page.items, "next_cursor": page.next_cursor})


@functools.cache
def openapi_document() -> bytes:
    """The checked-in OpenAPI document, read once from the installed package."""
    return resources.files("engine.admin").joinpath("openapi.json").read_bytes()


@routes.get("/openapi.json")
async def openapi(request: web.Request) -> web.Response:
    """The OpenAPI 3.1 document of this server."""
    no_query(request)
    return web.Response(body=openapi_document(), content_type="application/json")


# -- endpoints ----------------------------------------------------------------------------------


def _secret(body: Body) -> str | None:
    """An endpoint secret given in ``body``; never echoed in the error."""
    secret = body.text("secret", min_len=1, max_len=200)
    if secret is not None and SECRET.fullmatch(secret) is None:
        raise invalid("secret", 'must be "whsec_" and the base64 of a 24 to 64 byte key')
    return secret


def _endpoint_options(body: Body) -> EndpointOptions:
    """The endpoint settings given in ``body``, checked one by one in this order (the first bad
    one is the answer); ``rate_limit_per_s: null`` is 0 (none). A per-endpoint policy given as
    null is not a setting (see :func:`_resets`)."""
    description = body.text("description", max_len=1000)
    event_types = body.texts("event_types", max_items=100, max_len=200)
    max_in_flight = body.integer("max_in_flight", *MAX_IN_FLIGHT_BOUNDS)
    ordering = body.choice("ordering", ORDERINGS)
    rate_limit_per_s = body.number("rate_limit_per_s", 0, MAX_RATE_PER_S, nullable=True)
    if body.has("rate_limit_per_s") and rate_limit_per_s is None:
        rate_limit_per_s = 0.0
    resets = _resets(body)
    return EndpointOptions(
        description=description,
        event_types=tuple(event_types) if event_types is not None else None,
        max_in_flight=max_in_flight,
        ordering=Ordering(ordering) if ordering is not None else None,
        rate_limit_per_s=rate_limit_per_s,
        headers=None if "headers" in resets else body.string_map("headers", max_items=MAX_HEADERS),
        filter=None if "filter" in resets else body.text("filter", min_len=1, max_len=MAX_FILTER),
        retry_schedule=None
        if "retry_schedule" in resets
        else body.durations("retry_schedule", max_items=MAX_RETRY_DELAYS, max_s=MAX_DELAY_S),
        timeout_s=None if "timeout_s" in resets else body.integer("timeout_s", *TIMEOUT_S_BOUNDS),
    )


def _resets(body: Body) -> tuple[str, ...]:
    """The per-endpoint policies given as null: an update puts them back to their defaults (no
    headers, no filter, the settings' schedule and timeout); a create takes the defaults anyway."""
    return tuple(name for name in RESETTABLE if body.is_null(name))


def _account_filter(request: web.Request, given: str | None) -> tuple[bool, str | None]:
    """The account a list is confined to: the query's, or a portal token's own. False when a
    portal token asks for another account's, whose list is then empty (as if it had none)."""
    scope = scope_of(request)
    if scope is None:
        return True, given
    return given is None or given == scope, scope


async def confine_endpoint(request: web.Request, the_id: UUID) -> None:
    """404 for a portal token unless the endpoint is its account's; nothing for the operator.
    An endpoint's account never changes, so the check holds for the call that follows."""
    scope = scope_of(request)
    if scope is not None:
        with store_errors(endpoint_id="id"):
            await _store(request).get_endpoint(the_id, account_id=scope)


async def _confine_delivery(request: web.Request, the_id: int) -> None:
    scope = scope_of(request)
    if scope is not None:
        with store_errors(delivery_id="id"):
            await _store(request).get_delivery(the_id, account_id=scope)


@routes.post("/v1/endpoints")
async def create_endpoint(request: web.Request) -> web.Response:
    """Register an endpoint; 201 with the endpoint, its secret shown this once. A portal token
    creates it in its own account (account_id may be left out, or must be that account)."""
    no_query(request)
    body = await json_body(request, ("account_id", "url", "secret", *ENDPOINT_OPTIONS))
    given = body.text("account_id", min_len=1, max_len=200)
    scope = scope_of(request)
    if scope is not None and given not in (None, scope):
        raise ApiError(
            403,
            "forbidden",
            "account_id: a portal token creates endpoints in its own account only",
            field="account_id",
        )
    if scope is not None:
        account_id = scope
    elif given is None:
        raise invalid("account_id", "is required with the operator token")
    else:
        account_id = given
    url = need(body.text("url", min_len=1, max_len=2048), "url")
    secret = _secret(body)
    options = _endpoint_options(body)
    store = _store(request)
    with store_errors(endpoint_id="id"):
        new_id, _ = await store.create_endpoint(account_id, url, options, secret=secret)
        endpoint = await store.get_endpoint(new_id, reveal_secret=True)
    return _json(endpoint, 201, location=f"/v1/endpoints/{new_id}")


@routes.get("/v1/endpoints")
async def list_endpoints(request: web.Request) -> web.Response:
    """Endpoints oldest first, secrets masked, filtered by account and state."""
    query = Query(request, ("account_id", "enabled", "limit", "cursor"))
    visible, account_id = _account_filter(request, query.text("account_id", max_len=200))
    enabled, limit, cursor = query.boolean("enabled"), query.limit(), query.cursor()
    if not visible:
        if cursor is not None:  # a bad cursor is refused as for the token's own account
            with store_errors():
                keys.decode_endpoint_cursor(cursor)
        return _page(Page((), None))
    with store_errors():
        page = await _store(request).list_endpoints(
            account_id=account_id, enabled=enabled, limit=limit, cursor=cursor
        )
    return _page(page)


@routes.get("/v1/endpoints/{id}")
async def show_endpoint(request: web.Request) -> web.Response:
    """One endpoint; its secrets masked unless ``reveal_secret=true``."""
    reveal = Query(request, ("reveal_secret",)).boolean("reveal_secret") or False
    with store_errors(endpoint_id="id"):
        endpoint = await _store(request).get_endpoint(
            endpoint_id(request), reveal_secret=reveal, account_id=scope_of(request)
        )
    return _json(endpoint)


@routes.patch("/v1/endpoints/{id}")
async def update_endpoint(request: web.Request) -> web.Response:
    """Change the given settings of an endpoint; 200 with the endpoint."""
    no_query(request)
    the_id = endpoint_id(request)
    await confine_endpoint(request, the_id)
    body = await json_body(request, ("url", *ENDPOINT_OPTIONS))
    if not len(body):
        raise invalid("body", f"nothing to update; give one of url, {', '.join(ENDPOINT_OPTIONS)}")
    url = body.text("url", min_len=1, max_len=2048)
    options = _endpoint_options(body)
    store = _store(request)
    with store_errors(endpoint_id="id"):
        await store.update_endpoint(the_id, options, url=url, reset=_resets(body))
        endpoint = await store.get_endpoint(the_id)
    return _json(endpoint)


@routes.delete("/v1/endpoints/{id}")
async def delete_endpoint(request: web.Request) -> web.Response:
    """Delete an endpoint (its live deliveries are cancelled); 204."""
    no_query(request)
    the_id = endpoint_id(request)
    await confine_endpoint(request, the_id)
    with store_errors(endpoint_id="id"):
        await _store(request).delete_endpoint(the_id)
    return web.Response(status=204)


@routes.post("/v1/endpoints/{id}/disable")
async def disable_endpoint(request: web.Request) -> web.Response:
    """Disable an endpoint, cancelling its live deliveries; 200 with the endpoint."""
    no_query(request)
    the_id = endpoint_id(request)
    await confine_endpoint(request, the_id)
    body = await json_body(request, ("reason",), optional=True)
    reason = body.text("reason", max_len=1000)
    store = _store(request)
    with store_errors(endpoint_id="id"):
        await store.disable_endpoint(the_id, reason)
        endpoint = await store.get_endpoint(the_id)
    return _json(endpoint)


@routes.post("/v1/endpoints/{id}/enable")
async def enable_endpoint(request: web.Request) -> web.Response:
    """Enable an endpoint, re-queueing what the disable cancelled; 200 with the endpoint."""
    no_query(request)
    the_id = endpoint_id(request)
    await confine_endpoint(request, the_id)
    await json_body(request, (), optional=True)
    store = _store(request)
    with store_errors(endpoint_id="id"):
        await store.enable_endpoint(the_id)
        endpoint = await store.get_endpoint(the_id)
    return _json(endpoint)


@routes.post("/v1/endpoints/{id}/rotate-secret")
async def rotate_secret(request: web.Request) -> web.Response:
    """Give an endpoint a new secret, shown this once; the old one signs too for the grace."""
    no_query(request)
    the_id = endpoint_id(request)
    await confine_endpoint(request, the_id)
    body = await json_body(request, ("grace_seconds", "secret"), optional=True)
    grace_s = body.integer("grace_seconds", 0, int(MAX_ROTATION_GRACE.total_seconds()))
    new_secret = _secret(body)
    store = _store(request)
    with store_errors(endpoint_id="id", grace="grace_seconds"):
        secret = await store.rotate_secret(
            the_id,
            DEFAULT_ROTATION_GRACE if grace_s is None else timedelta(seconds=grace_s),
            new_secret,
        )
        endpoint = await store.get_endpoint(the_id)
    return _json(
        {
            "id": the_id,
            "secret": secret,
            "previous_secret_expires_at": endpoint.previous_secret_expires_at,
        }
    )


@routes.post("/v1/endpoints/{id}/recover")
async def recover(request: web.Request) -> web.Response:
    """Re-send what failed or was cancelled for an endpoint since a time; 200 with the count."""
    no_query(request)
    the_id = endpoint_id(request)
    await confine_endpoint(request, the_id)
    body = await json_body(request, ("since",))
    since = need(body.time("since"), "since")
    with store_errors(endpoint_id="id"):
        count = await _store(request).recover(the_id, since)
    return _json({"count": count})


# -- events and deliveries ----------------------------------------------------------------------


@routes.post("/v1/events")
async def emit(request: web.Request) -> web.Response:
    """Emit an event as the app's trigger would; 202 with its id, or null when nobody listens."""
    no_query(request)
    body = await json_body(request, ("account_id", "type", "payload", "idempotency_key"))
    account_id = need(body.text("account_id", min_len=1, max_len=200), "account_id")
    event_type = need(body.text("type", min_len=1, max_len=200), "type")
    payload = need(body.json_object("payload"), "payload")
    key = body.text("idempotency_key", min_len=1, max_len=255)
    with store_errors(event_type="type"):
        event_id = await _store(request).emit(account_id, event_type, payload, key)
    return _json({"event_id": event_id}, 202)


@routes.get("/v1/deliveries")
async def list_deliveries(request: web.Request) -> web.Response:
    """The delivery log, newest first, filtered."""
    query = Query(
        request,
        ("status", "endpoint_id", "event_type", "account_id", "since", "limit", "cursor"),
    )
    status = query.choice("status", STATUSES)
    the_endpoint, event_type = query.uuid("endpoint_id"), query.text("event_type", max_len=200)
    since, limit, cursor = query.time("since"), query.limit(), query.cursor()
    visible, account_id = _account_filter(request, query.text("account_id", max_len=200))
    if not visible:
        if cursor is not None:
            with store_errors():
                keys.decode_delivery_cursor(cursor)
        return _page(Page((), None))
    with store_errors():
        page = await _store(request).list_deliveries(
            status=DeliveryStatus(status) if status is not None else None,
            endpoint_id=the_endpoint,
            event_type=event_type,
            since=since,
            account_id=account_id,
            limit=limit,
            cursor=cursor,
        )
    return _page(page)


@routes.get("/v1/accepted-events")
async def accepted_events(request: web.Request) -> web.Response:
    """Events accepted from the app that have no deliveries yet: while an engine runs they wait a
    moment; while none runs, they wait until one is back."""
    query = Query(request, ("account_id",))
    visible, account_id = _account_filter(request, query.text("account_id", max_len=200))
    if not visible:
        return _json(AcceptedEvents(0, None))
    with store_errors():
        accepted = await _store(request).accepted_events(account_id=account_id)
    return _json(accepted)


@routes.get("/v1/deliveries/{id}")
async def show_delivery(request: web.Request) -> web.Response:
    """One delivery with every attempt and the event's payload."""
    no_query(request)
    the_id = delivery_id(request)
    with store_errors(delivery_id="id"):
        detail = await _store(request).get_delivery(the_id, account_id=scope_of(request))
    return _json(detail)


@routes.post("/v1/deliveries/{id}/redeliver")
async def redeliver(request: web.Request) -> web.Response:
    """Send a delivery's event to its endpoint again as a new delivery; 201 with its id."""
    no_query(request)
    the_id = delivery_id(request)
    await _confine_delivery(request, the_id)
    await json_body(request, (), optional=True)
    with store_errors(delivery_id="id"):
        new_id = await _store(request).redeliver(the_id)
    return _json({"delivery_id": new_id}, 201, location=f"/v1/deliveries/{new_id}")
