"""The API's customer side: portal access for one account, the event catalogue, test events.

``POST /v1/accounts/{account_id}/portal-access`` (operator only) mints a short-lived token that
confines the API to one account (:mod:`engine.portal_tokens`, :mod:`engine.admin.access`), and the
URL of the portal page that carries it. ``GET /v1/session`` says who a token is;
``GET /v1/event-types`` lists the catalogue with each type's JSON Schema and example;
``POST /v1/endpoints/{id}/test`` sends that example to one endpoint as a test event.
"""

from __future__ import annotations

from datetime import timedelta

from aiohttp import web

from engine.admin.access import principal_of, scope_of
from engine.admin.parsing import check_text, endpoint_id, json_body, need, no_query
from engine.admin.routes import _json, _store, confine_endpoint, store_errors
from engine.admin.server import CONTEXT, ApiError
from engine.errors import InvalidInput
from engine.portal_tokens import DEFAULT_TTL, MAX_TTL, MIN_TTL, check_account, mint, portal_url

routes = web.RouteTableDef()


@routes.post("/v1/accounts/{account_id}/portal-access")
async def portal_access(request: web.Request) -> web.Response:
    """Mint a portal token for one account; 201 with the token, the portal URL and the expiry.
    503 ``not_configured`` while WEBHOOKS_PORTAL_KEY is unset."""
    no_query(request)
    try:
        account_id = check_account(check_text(request.match_info["account_id"], "account_id"))
    except InvalidInput as exc:
        raise ApiError(400, "invalid_field", str(exc), field="account_id") from None
    body = await json_body(request, ("ttl_s",), optional=True)
    ttl_s = body.integer("ttl_s", int(MIN_TTL.total_seconds()), int(MAX_TTL.total_seconds()))
    context = request.app[CONTEXT]
    if context.portal_key is None:
        raise ApiError(
            503,
            "not_configured",
            "portal access is off: set WEBHOOKS_PORTAL_KEY (32+ characters) and restart the "
            "engine to mint portal tokens",
        )
    ttl = DEFAULT_TTL if ttl_s is None else timedelta(seconds=ttl_s)
    token = mint(context.portal_key, account_id, ttl)
    base = context.public_url or str(request.url.origin())
    return _json(
        {
            "token": token.token,
            "url": portal_url(base, token.token),
            "expires_at": token.expires_at,
        },
        201,
    )


@routes.get("/v1/session")
async def session(request: web.Request) -> web.Response:
    """Who the caller is: a portal token's account and expiry, or the operator."""
    no_query(request)
    principal = principal_of(request)
    return _json(
        {
            "role": "operator" if principal.account_id is None else "portal",
            "account_id": principal.account_id,
            "expires_at": principal.expires_at,
        }
    )


@routes.get("/v1/event-types")
async def event_types(request: web.Request) -> web.Response:
    """The event catalogue: each type's description, JSON Schema of its data, and example."""
    no_query(request)
    with store_errors():
        types = await _store(request).list_event_types(account_id=scope_of(request))
    return _json({"data": types})


@routes.post("/v1/endpoints/{id}/test")
async def send_test(request: web.Request) -> web.Response:
    """Send the catalogue's example of an event type to one endpoint as a test event; 202 with
    the delivery's id, which the delivery log shows as a test."""
    no_query(request)
    the_id = endpoint_id(request)
    await confine_endpoint(request, the_id)
    body = await json_body(request, ("event_type",))
    event_type = need(body.text("event_type", min_len=1, max_len=200), "event_type")
    with store_errors(endpoint_id="id"):
        delivery_id = await _store(request).send_test(the_id, event_type)
    return _json({"delivery_id": delivery_id}, 202, location=f"/v1/deliveries/{delivery_id}")
