"""Who is calling the admin API: the operator (every account) or a portal token (one account).

The operator's credential is ``WEBHOOKS_ADMIN_TOKEN`` (or none, on loopback without a token). A
portal token (:mod:`engine.portal_tokens`) confines the caller to its account: it may use only the
routes of :data:`PORTAL_ROUTES`, and those confine what they read and change to that account
(:func:`scope_of`). Every other route answers it 403, so a route added later is operator-only
until it is listed here. Cross-origin calls (CORS) are allowed from ``WEBHOOKS_CORS_ORIGINS``
only, without credentials: both tokens travel in the Authorization header, never in a cookie.
"""

from __future__ import annotations

import hmac
from dataclasses import dataclass
from datetime import datetime

from aiohttp import web

from engine.portal_tokens import TokenExpired, TokenRefused, verify

# (method, route template) a portal token may call. Each handler confines itself to the token's
# account through scope_of(); the OpenAPI document lists portalToken on exactly these operations.
PORTAL_ROUTES = frozenset(
    {
        ("GET", "/v1/session"),
        ("GET", "/v1/event-types"),
        ("GET", "/v1/endpoints"),
        ("POST", "/v1/endpoints"),
        ("GET", "/v1/endpoints/{id}"),
        ("PATCH", "/v1/endpoints/{id}"),
        ("DELETE", "/v1/endpoints/{id}"),
        ("POST", "/v1/endpoints/{id}/disable"),
        ("POST", "/v1/endpoints/{id}/enable"),
        ("POST", "/v1/endpoints/{id}/rotate-secret"),
        ("POST", "/v1/endpoints/{id}/recover"),
        ("POST", "/v1/endpoints/{id}/test"),
        ("GET", "/v1/deliveries"),
        ("GET", "/v1/deliveries/{id}"),
        ("POST", "/v1/deliveries/{id}/redeliver"),
        ("GET", "/v1/accepted-events"),
    }
)
CORS_METHODS = "GET, POST, PATCH, DELETE"
CORS_HEADERS = "Authorization, Content-Type"
CORS_MAX_AGE_S = 600


@dataclass(frozen=True, slots=True)
class Principal:
    """The caller: ``account_id`` None is the operator; else a portal token's account."""

    account_id: str | None
    expires_at: datetime | None = None


OPERATOR = Principal(None)
_PRINCIPAL = web.RequestKey("principal", Principal)


class Unauthenticated(Exception):
    """No valid credential: ``code`` is ``unauthorized`` or ``token_expired``."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def authenticate(
    authorization: str, operator_token: str | None, portal_key: str | None
) -> Principal:
    """The principal of an ``Authorization`` header value, or Unauthenticated.

    The operator token wins; then a portal token, when a portal key is configured (a bearer that
    is neither is refused). Without an operator token (loopback only, see engine.config) any other
    request is the operator's, as before portal tokens existed.
    """
    scheme, _, given = authorization.partition(" ")
    given = given.strip()
    bearer = scheme.lower() == "bearer" and bool(given)
    if (
        operator_token is not None
        and bearer
        and hmac.compare_digest(given.encode(), operator_token.encode())
    ):
        return OPERATOR
    if bearer and portal_key is not None:
        try:
            token = verify(portal_key, given)
        except TokenRefused as exc:
            code = "token_expired" if isinstance(exc, TokenExpired) else "unauthorized"
            raise Unauthenticated(code, f"Authorization: {exc}; ask for a new portal URL") from exc
        return Principal(token.account_id, token.expires_at)
    if operator_token is None:
        return OPERATOR
    raise Unauthenticated(
        "unauthorized",
        "missing or wrong bearer token: send Authorization: Bearer <WEBHOOKS_ADMIN_TOKEN> "
        "or a portal token",
    )


def remember(request: web.Request, principal: Principal) -> None:
    request[_PRINCIPAL] = principal


def principal_of(request: web.Request) -> Principal:
    """The request's principal (the operator on the public routes, which nobody authenticates)."""
    principal: Principal = request.get(_PRINCIPAL, OPERATOR)
    return principal


def scope_of(request: web.Request) -> str | None:
    """The account a request is confined to, or None for the operator's."""
    return principal_of(request).account_id


def portal_may_call(request: web.Request) -> bool:
    """Whether a portal token may call this route (an unknown path: yes, so it gets its 404)."""
    route = request.match_info.route
    resource = route.resource
    if resource is None:
        return True
    return (route.method, resource.canonical) in PORTAL_ROUTES


def cors_headers(origin: str, allowed: frozenset[str]) -> dict[str, str]:
    """The CORS headers for a request from ``origin``: none unless it is allowed."""
    if origin not in allowed:
        return {}
    return {
        "Access-Control-Allow-Origin": origin,
        "Access-Control-Expose-Headers": "Location, WWW-Authenticate",
        "Vary": "Origin",
    }


def preflight(origin: str, allowed: frozenset[str]) -> web.Response:
    """The answer to a CORS preflight (OPTIONS with Access-Control-Request-Method): 204 with the
    methods and headers the API takes for an allowed origin, 403 for any other."""
    if origin not in allowed:
        return web.json_response(
            {
                "error": {
                    "status": 403,
                    "code": "forbidden",
                    "message": f"origin {origin!r} is not in WEBHOOKS_CORS_ORIGINS",
                    "field": "Origin",
                }
            },
            status=403,
            headers={"Vary": "Origin"},
        )
    headers = cors_headers(origin, allowed)
    headers.update(
        {
            "Access-Control-Allow-Methods": CORS_METHODS,
            "Access-Control-Allow-Headers": CORS_HEADERS,
            "Access-Control-Max-Age": str(CORS_MAX_AGE_S),
        }
    )
    return web.Response(status=204, headers=headers)
