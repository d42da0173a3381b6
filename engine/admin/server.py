"""The admin HTTP server: /healthz, /readyz, /metrics, and the admin API (admin.routes), one app.

``create_app(context, *route_tables)`` builds the aiohttp application; :class:`AdminServer` binds
it and stops it. Handlers reach the engine's parts through ``request.app[CONTEXT]``. Another
module adds routes without touching this one::

    routes = web.RouteTableDef()

    @routes.get("/v1/endpoints/{id}")
    async def show_endpoint(request: web.Request) -> web.Response:
        store = request.app[CONTEXT].store
        ...
        raise ApiError(404, "not_found", "no endpoint with this id", field="id")

and the app passes that table: ``create_app(context, api.routes)``.

Every route except those in :data:`PUBLIC_PATHS` requires ``Authorization: Bearer <token>`` when
a token is configured (a new route is protected by default). Errors, including unknown paths and
methods, are JSON: ``{"error": {"status": ..., "code": ..., "message": ..., "field": ...}}`` (see
:func:`json_error`); a handler raises :class:`ApiError` to produce one.
"""

from __future__ import annotations

import asyncio
import hmac
import ipaddress
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from http import HTTPStatus
from typing import Any

import structlog
from aiohttp import web

from engine.admin import portal
from engine.db.store import Store
from engine.errors import ConfigError
from engine.metrics import Metrics

log = structlog.get_logger("engine.admin.server")

# Probes answer without a token: an orchestrator's health check has none, and they reveal nothing.
# Nor does the OpenAPI document, which is the file checked into the repository, nor the portal's
# static page, whose API calls carry the token.
PUBLIC_PATHS = frozenset({"/healthz", "/readyz", "/openapi.json"}) | portal.PATHS
READY_TIMEOUT_S = 2.0  # the database checks of /readyz together
SHUTDOWN_TIMEOUT_S = 2.0  # for requests still open when the server stops

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@dataclass(frozen=True)
class AdminContext:
    """What handlers use, built by the app: ``request.app[CONTEXT]``.

    ``listener_connected`` is None when LISTEN is turned off; ``stopping`` is set when shutdown
    began. The admin server asks the listener only this one question, so it takes a callable and
    not the listener: the admin and delivery stages stay independent.
    """

    store: Store
    metrics: Metrics
    listener_connected: Callable[[], bool] | None
    stopping: asyncio.Event
    token: str | None


CONTEXT = web.AppKey("context", AdminContext)


class ApiError(Exception):
    """An error response: raise it from a handler (or middleware) to answer with JSON."""

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        *,
        field: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.field = field
        self.headers = headers


def json_error(
    status: int,
    code: str,
    message: str,
    *,
    field: str | None = None,
    headers: dict[str, str] | None = None,
) -> web.Response:
    """The one error shape: ``{"error": {"status", "code", "message"[, "field"]}}``.

    ``status`` repeats the HTTP status; ``code`` is a stable snake_case word for programs;
    ``message`` names what was wrong for people; ``field`` names the offending request field
    (body field, query parameter, path parameter or header), when there is one.
    """
    error: dict[str, Any] = {"status": status, "code": code, "message": message}
    if field is not None:
        error["field"] = field
    return web.json_response({"error": error}, status=status, headers=headers)


def create_app(
    context: AdminContext,
    *route_tables: Iterable[web.AbstractRouteDef],
    client_max_size: int = 1024**2,
) -> web.Application:
    """The admin application: health, readiness and metrics, plus each of ``route_tables``.

    ``client_max_size`` bounds a request body in bytes; a larger one is refused with 413.
    """
    app = web.Application(middlewares=[_errors, _auth], client_max_size=client_max_size)
    app[CONTEXT] = context
    app.add_routes(
        [
            web.get("/healthz", _healthz),
            web.get("/readyz", _readyz),
            web.get("/metrics", _metrics),
        ]
    )
    for table in route_tables:
        app.add_routes(table)
    return app


class AdminServer:
    """Serves an application on ``host``:``port`` between start() and close()."""

    def __init__(self, app: web.Application, host: str, port: int) -> None:
        self._runner = web.AppRunner(
            app, access_log=None, shutdown_timeout=SHUTDOWN_TIMEOUT_S, handle_signals=False
        )
        self._host = host
        self._port = port
        self.url: str | None = None

    async def start(self) -> str:
        """Bind and serve; return the base URL (with the real port when ``port`` was 0).

        Raises ConfigError when the address cannot be bound (in use, or not this machine's).
        """
        await self._runner.setup()
        site = web.TCPSite(self._runner, self._host, self._port)
        try:
            await site.start()
        except OSError as exc:
            await self._runner.cleanup()
            raise ConfigError(
                f"the admin server cannot listen on {self._host}:{self._port} "
                f"({exc.strerror or exc}); set WEBHOOKS_ADMIN_HOST / WEBHOOKS_ADMIN_PORT",
                field="admin_port",
            ) from exc
        host, port = self._runner.addresses[0][:2]
        shown = f"[{host}]" if ipaddress.ip_address(host).version == 6 else host
        self.url = f"http://{shown}:{port}"
        log.info("admin_listening", url=self.url)
        return self.url

    async def close(self) -> None:
        """Stop listening; requests still open get SHUTDOWN_TIMEOUT_S to finish."""
        await self._runner.cleanup()


@web.middleware
async def _errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except ApiError as exc:
        return json_error(exc.status, exc.code, exc.message, field=exc.field, headers=exc.headers)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        phrase = HTTPStatus(exc.status).phrase
        code = phrase.lower().replace(" ", "_").replace("-", "_")
        allow = {"Allow": exc.headers["Allow"]} if "Allow" in exc.headers else None  # 405
        return json_error(
            exc.status, code, f"{phrase}: {request.method} {request.path}", headers=allow
        )
    except Exception:  # a bug in a handler: logged here, answered as 500 JSON
        log.exception("admin_request_failed", method=request.method, path=request.path)
        return json_error(500, "internal", "internal error; see the engine's log")


@web.middleware
async def _auth(request: web.Request, handler: Handler) -> web.StreamResponse:
    token = request.app[CONTEXT].token
    if token is not None and request.path not in PUBLIC_PATHS:
        scheme, _, given = request.headers.get("Authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(
            given.strip().encode(), token.encode()
        ):
            raise ApiError(
                401,
                "unauthorized",
                "missing or wrong bearer token: send Authorization: Bearer <WEBHOOKS_ADMIN_TOKEN>",
                field="Authorization",
                headers={"WWW-Authenticate": "Bearer"},
            )
    return await handler(request)


async def _healthz(request: web.Request) -> web.Response:
    """200 while the process serves: liveness only, no dependency is checked."""
    return web.json_response({"status": "ok"})


async def _readyz(request: web.Request) -> web.Response:
    """200 when every check is ok, else 503 naming the failed checks."""
    checks = await readiness(request.app[CONTEXT])
    failed = [name for name, state in checks.items() if state not in ("ok", "disabled")]
    if failed:
        return web.json_response(
            {"status": "not_ready", "checks": checks, "failed": failed}, status=503
        )
    return web.json_response({"status": "ready", "checks": checks})


async def _metrics(request: web.Request) -> web.Response:
    body, content_type = request.app[CONTEXT].metrics.render()
    return web.Response(body=body, headers={"Content-Type": content_type})


async def readiness(context: AdminContext) -> dict[str, str]:
    """Each check's state: ``ok`` (or ``disabled``) or a word saying what is wrong.

    database: ``ok`` | ``unreachable`` | ``timeout``; migrations: ``ok`` | ``outdated`` |
    ``unknown`` (the database did not answer); listener: ``ok`` | ``disconnected`` |
    ``disabled``; engine: ``ok`` | ``stopping``. The database checks share READY_TIMEOUT_S.
    """
    database = await context.store.readiness(READY_TIMEOUT_S)
    checks: dict[str, str] = {"database": database.database, "migrations": database.migrations}
    if context.listener_connected is None:
        checks["listener"] = "disabled"
    else:
        checks["listener"] = "ok" if context.listener_connected() else "disconnected"
    checks["engine"] = "stopping" if context.stopping.is_set() else "ok"
    return checks
