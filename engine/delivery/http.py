"""One HTTP POST of prepared bytes, and what came back, classified (DESIGN §5).

The sender knows nothing of deliveries: engine.delivery.request builds the URL, body and headers,
and the actor turns a :class:`SendResult` into the attempt's Outcome. The sender owns the
process's only ``aiohttp.ClientSession``: one connection pool, one DNS cache, one SSRF-guarded
resolver for every endpoint. Each attempt has a single deadline covering connect, TLS, sending,
the response headers and the body excerpt, so neither a slow nor an endless receiver can hold an
actor longer than ``timeout_s`` or make it buffer more than ``excerpt_bytes``.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from collections.abc import Mapping
from dataclasses import dataclass

import aiohttp
from yarl import URL

from engine.delivery.retry_after import parse_retry_after
from engine.delivery.ssrf import BlockedAddressError, GuardedResolver, check_literal_host
from engine.models import DEFAULT_TIMEOUT_S, ErrorKind

__all__ = ["InsecureUrlError", "InvalidUrlError", "SendResult", "Sender"]

# aiohttp's default. The cache only ever holds addresses the guard accepted.
DNS_CACHE_TTL_S = 10
_MESSAGE_CHARS = 200
_RETRY_AFTER_STATUSES = frozenset({429, 503})


class InvalidUrlError(ValueError):
    """The endpoint URL is not an absolute http(s) URL with a usable host."""


class InsecureUrlError(ValueError):
    """The endpoint URL is plain http:// while ``allow_http`` is off."""


@dataclass(frozen=True, slots=True)
class SendResult:
    """What one POST came back with, classified: the fields of an Outcome the sender knows.

    ``status`` is 0 when no HTTP response arrived; ``error_kind`` says why, or why a status is a
    failure (not 2xx). ``retry_after_s`` is the parsed ``Retry-After`` of a 429 or 503.
    """

    status: int
    error_kind: ErrorKind | None = None
    error_message: str | None = None
    excerpt: str | None = None
    retry_after_s: float | None = None

    @classmethod
    def failed(cls, kind: ErrorKind, message: str) -> SendResult:
        """No HTTP status: the transport failed, or the engine ended the attempt itself."""
        return cls(status=0, error_kind=kind, error_message=_short(message))

    @classmethod
    def answered(
        cls,
        status: int,
        reason: str,
        excerpt: str,
        location: str | None,
        retry_after_s: float | None,
    ) -> SendResult:
        """A response arrived: only 2xx succeeds; a 3xx is a failure, never followed."""
        kind: ErrorKind | None = None
        message: str | None = None
        if 300 <= status <= 399:
            kind = ErrorKind.REDIRECT
            message = _short(f"redirect {status} to {location or '(no Location)'}, not followed")
        elif not 200 <= status <= 299:
            kind, message = ErrorKind.HTTP_STATUS, _short(f"HTTP {status} {reason}".strip())
        return cls(status, kind, message, excerpt, retry_after_s)


@dataclass(eq=False)
class _Client:
    """A session with its resolver (aiohttp does not close a resolver it was given)."""

    session: aiohttp.ClientSession
    resolver: GuardedResolver
    in_flight: int = 0

    async def close(self) -> None:
        await self.session.close()
        await self.resolver.close()


class Sender:
    """POSTs prepared requests to endpoints through one shared, SSRF-guarded ``ClientSession``.

    Use ``async with Sender(...) as sender`` (or :meth:`start` / :meth:`close`). ``send`` returns
    a :class:`SendResult` for every failure and raises only ``CancelledError`` (and
    ``RuntimeError`` if the sender is not started). Waiting for one of the ``max_connections``
    pooled connections counts against ``timeout_s``, so callers should bound concurrency below
    that number.

    When :meth:`update_policy` turns private networks off, the next ``send`` moves to a fresh
    session: pooled keep-alive connections and cached DNS answers were vetted under the old policy
    and must not be reused. The old session closes once its in-flight sends finish.
    """

    def __init__(
        self,
        *,
        timeout_s: float | None = None,
        allow_http: bool = False,
        allow_private_networks: bool = False,
        max_connections: int = 256,
        excerpt_bytes: int = 16384,
    ) -> None:
        self._timeout_s = timeout_s
        self._allow_http = allow_http
        self._allow_private = allow_private_networks
        self._max_connections = max_connections
        self._excerpt_bytes = excerpt_bytes
        self._client: _Client | None = None
        self._retired: list[_Client] = []
        self._stale = False

    async def __aenter__(self) -> Sender:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    async def start(self) -> None:
        """Create the session; must run inside the event loop that will send. Idempotent."""
        if self._client is None:
            self._client = self._new_client()

    async def close(self) -> None:
        """Close every session; sends still in flight fail. Call after draining."""
        clients = [*self._retired, *([self._client] if self._client else [])]
        self._client, self._retired = None, []
        for client in clients:
            await client.close()

    def update_policy(self, *, allow_http: bool, allow_private_networks: bool) -> None:
        """Apply new ``webhooks.settings`` values; they hold from the next ``send`` on."""
        if self._allow_private and not allow_private_networks:
            self._stale = True
        self._allow_http = allow_http
        self._allow_private = allow_private_networks

    async def send(
        self,
        url: str,
        body: bytes,
        headers: Mapping[str, str],
        *,
        timeout_s: float | None = None,
    ) -> SendResult:
        """POST ``body`` with ``headers`` to ``url`` once and describe what came back, within
        ``timeout_s`` (the endpoint's) or the sender's ``timeout_s``, whichever is shorter
        (:data:`~engine.models.DEFAULT_TIMEOUT_S` when neither is given).

        Redirects are not followed. Once the status line has arrived it decides the result; a
        failure while reading the body excerpt (deadline, dropped connection) only shortens the
        excerpt, because the receiver has already answered.
        """
        client = await self._current_client()
        client.in_flight += 1
        try:
            target = self._vet_url(url)
            given = [t for t in (timeout_s, self._timeout_s) if t is not None]
            deadline_s = min(given, default=DEFAULT_TIMEOUT_S)
            return await self._exchange(client.session, target, body, headers, deadline_s)
        except Exception as exc:  # noqa: BLE001 - every failure becomes a result (DESIGN §5)
            return SendResult.failed(*_classify(exc))
        finally:
            client.in_flight -= 1

    async def _current_client(self) -> _Client:
        if self._client is None:
            raise RuntimeError("Sender.start() was not called")
        if self._stale:
            self._retired.append(self._client)
            self._client = self._new_client()
            self._stale = False
        for old in [c for c in self._retired if c.in_flight == 0]:
            await old.close()  # idempotent, so a cancellation here is retried next time
            # Another send may have closed and removed it while this one awaited the close.
            if old in self._retired:
                self._retired.remove(old)
        return self._client

    def _new_client(self) -> _Client:
        resolver = GuardedResolver(lambda: self._allow_private)
        connector = aiohttp.TCPConnector(
            limit=self._max_connections,
            # No per-host cap: endpoints of different customers share hosts (Zapier, Slack), and a
            # wait for a slot would count against their timeout. Actors bound each endpoint.
            limit_per_host=0,
            resolver=resolver,
            ttl_dns_cache=DNS_CACHE_TTL_S,
        )
        session = aiohttp.ClientSession(
            connector=connector,
            # No aiohttp timeouts: _exchange puts one deadline on the whole attempt. Each timer
            # is a libuv handle on uvloop, and three per attempt were a tenth of the engine's CPU.
            timeout=aiohttp.ClientTimeout(total=None),
            cookie_jar=aiohttp.DummyCookieJar(),  # one customer's cookies must not reach another
            trust_env=False,  # no proxy from the environment: it would bypass the SSRF guard
            # Ask for and keep identity bodies: decompressing could turn the capped excerpt
            # into an uncapped amount of work.
            skip_auto_headers=("Accept-Encoding",),
            auto_decompress=False,
        )
        return _Client(session, resolver)

    def _vet_url(self, url: str) -> URL:
        """Checks that need no connection: syntax, scheme policy, IP literals (no resolver)."""
        try:
            target = URL(url)
        except (TypeError, ValueError) as exc:
            raise InvalidUrlError("the URL cannot be parsed") from exc
        host = target.raw_host
        if target.scheme not in ("http", "https") or not host:
            raise InvalidUrlError("the URL must be an absolute http(s) URL with a host")
        if target.scheme == "http" and not self._allow_http:
            raise InsecureUrlError("http:// is not allowed, use https://")
        try:
            check_literal_host(host, self._allow_private)
        except ValueError as exc:  # BlockedAddressError is an OSError and passes through
            raise InvalidUrlError(str(exc)) from exc
        return target

    async def _exchange(
        self,
        session: aiohttp.ClientSession,
        target: URL,
        data: bytes,
        headers: Mapping[str, str],
        timeout_s: float,
    ) -> SendResult:
        """The status, body excerpt, Location and Retry-After of one POST, classified."""
        resp: aiohttp.ClientResponse | None = None
        body = bytearray()
        try:
            try:
                # One deadline for connect, TLS, sending, the status line and the excerpt.
                async with asyncio.timeout(timeout_s):
                    resp = await session.post(
                        target, data=data, headers=headers, allow_redirects=False
                    )
                    with contextlib.suppress(aiohttp.ClientError):
                        while len(body) < self._excerpt_bytes:
                            chunk = await resp.content.read(self._excerpt_bytes - len(body))
                            if not chunk:
                                break
                            body += chunk
            except TimeoutError:
                if resp is None:
                    raise  # no status line in time: the attempt timed out
                # The status line came in time and decides; the deadline only cut the excerpt.
            retry_after = None
            if resp.status in _RETRY_AFTER_STATUSES:
                retry_after = parse_retry_after(resp.headers.get("Retry-After"))
            return SendResult.answered(
                resp.status,
                resp.reason or "",
                body.decode(errors="replace"),
                resp.headers.get("Location"),
                retry_after,
            )
        finally:
            if resp is not None and resp.content.at_eof():
                resp.release()  # body fully read: the connection can be kept alive
            elif resp is not None:
                resp.close()  # never drain the rest of a huge or endless body


def _classify(exc: Exception) -> tuple[ErrorKind, str]:  # noqa: C901 - one flat decision table
    """Why an attempt that got no HTTP status failed, from the exception that ended it.

    Checks run from the most specific class to the least (aiohttp's tree: certificate errors are
    SSL errors are connector errors are OS errors). Messages are built from exception attributes,
    never ``str()`` of aiohttp errors that embed the URL (which may carry tokens).
    """
    if isinstance(exc, BlockedAddressError):
        return ErrorKind.BLOCKED_ADDRESS, f"refused by SSRF guard: {exc}"
    if isinstance(exc, aiohttp.ClientConnectorError) and isinstance(
        exc.os_error, BlockedAddressError
    ):
        return ErrorKind.BLOCKED_ADDRESS, f"refused by SSRF guard: {exc.os_error}"
    if isinstance(exc, InsecureUrlError):
        return ErrorKind.INSECURE_URL, str(exc)
    if isinstance(exc, InvalidUrlError):
        return ErrorKind.INVALID_URL, str(exc)
    if isinstance(exc, aiohttp.InvalidURL):
        return ErrorKind.INVALID_URL, "aiohttp refused the URL"
    if isinstance(exc, aiohttp.ClientConnectorCertificateError):
        cert_error = exc.certificate_error
        reason = getattr(cert_error, "verify_message", None) or str(cert_error)
        return ErrorKind.TLS, f"TLS certificate of {exc.host} rejected: {reason}"
    if isinstance(exc, aiohttp.ClientSSLError | aiohttp.ServerFingerprintMismatch | ssl.SSLError):
        return ErrorKind.TLS, f"TLS handshake failed: {_os_reason(exc)}"
    if isinstance(exc, aiohttp.ClientConnectorDNSError):
        return ErrorKind.DNS, f"cannot resolve {exc.host}: {_os_reason(exc.os_error)}"
    if isinstance(exc, TimeoutError):
        return ErrorKind.TIMEOUT, "no response within the timeout"
    if isinstance(exc, aiohttp.ClientConnectorError):
        return ErrorKind.CONNECT, f"cannot connect to {exc.host}:{exc.port}: {_os_reason(exc)}"
    if isinstance(exc, aiohttp.ServerDisconnectedError):
        return ErrorKind.DISCONNECTED, "server closed the connection without a response"
    if isinstance(exc, aiohttp.ClientResponseError):
        # The parser's message quotes the offending bytes after a colon; keep only its reason.
        reason = exc.message.split(":", 1)[0]
        return ErrorKind.PROTOCOL, f"invalid HTTP response: {reason}"
    if isinstance(exc, aiohttp.ClientPayloadError):
        return ErrorKind.PROTOCOL, "invalid HTTP response body"
    if isinstance(exc, aiohttp.ClientConnectionError | ConnectionError):
        return ErrorKind.DISCONNECTED, f"connection lost: {_os_reason(exc)}"
    if isinstance(exc, OSError):
        return ErrorKind.CONNECT, f"network error: {_os_reason(exc)}"
    return ErrorKind.PROTOCOL, f"unexpected {type(exc).__name__}"


def _os_reason(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return type(exc).__name__


def _short(text: str) -> str:
    """First line, at most _MESSAGE_CHARS: messages land in an SQL log, not a debugger."""
    line = text.strip().splitlines()[0] if text.strip() else ""
    return line if len(line) <= _MESSAGE_CHARS else line[: _MESSAGE_CHARS - 1] + "…"
