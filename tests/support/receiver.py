"""A scriptable webhook receiver for tests: a real aiohttp server on 127.0.0.1, port 0.

Tests script what each path answers and then inspect what arrived::

    async with Receiver() as r:
        r.script("/hook", Reply(status=503, headers={"Retry-After": "7"}), Reply(status=200))
        result = await sender.send(r.url("/hook"), body, {})
        received = await r.wait_for(1, path="/hook")

Replies are consumed in order per path and the last one repeats, so ``r.script("/p", Reply(500))``
makes ``/p`` fail forever; an unscripted path answers ``200`` with an empty body. Every request
is recorded with its headers, body, arrival time and how many requests were in progress when it
arrived, which is what ordering, concurrency and rate-limit tests assert on.

Misbehaviours a real endpoint shows are one field each: a delay, a huge, endless or dripping body,
a reset connection, bytes that are not HTTP, headers too large to parse.
"""

from __future__ import annotations

import asyncio
import socket
import ssl
import struct
import time
from collections import Counter, defaultdict
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import TracebackType

from aiohttp import web
from multidict import CIMultiDictProxy

__all__ = ["MIB", "Received", "Receiver", "Reply"]

MIB = 1024 * 1024
_CHUNK = 64 * 1024


@dataclass(frozen=True, slots=True)
class Reply:
    """How the receiver answers one request. The defaults are a prompt, empty ``200``.

    ``delay_s`` waits before anything is sent (a hanging endpoint: a large value). The body is
    ``body``, followed by ``extra_body_bytes`` filler bytes streamed in chunks (a huge body without
    holding it in memory); ``endless`` streams filler until the client goes away; ``drip_s`` sends
    the headers, then ``body`` one byte every ``drip_s`` seconds (slowloris). ``header_bytes`` adds
    one header of that many bytes. ``until`` holds the request until the test sets that event (a
    hanging endpoint the test releases, for tests that order on it rather than on time); it is
    waited for after ``delay_s``. ``reset`` closes the connection with a TCP RST instead of
    answering; ``raw`` writes those bytes on the transport instead of a response, then closes
    (with ``drip_s``, one byte every ``drip_s`` seconds: a status line that never completes).
    """

    status: int = 200
    body: bytes = b""
    headers: Mapping[str, str] = field(default_factory=dict)
    delay_s: float = 0.0
    extra_body_bytes: int = 0
    endless: bool = False
    drip_s: float | None = None
    header_bytes: int = 0
    reset: bool = False
    raw: bytes | None = None
    until: asyncio.Event | None = None

    @classmethod
    def redirect(cls, location: str, status: int = 302) -> Reply:
        """A redirect to ``location``."""
        return cls(status=status, headers={"Location": location})

    @classmethod
    def retry_after(cls, value: str, status: int = 429) -> Reply:
        """A refusal asking the sender to come back later."""
        return cls(status=status, headers={"Retry-After": value})


@dataclass(frozen=True, slots=True)
class Received:
    """One request as it arrived.

    ``arrived_at`` is ``time.monotonic()`` when the handler started (before the body was read).
    ``concurrency`` counts requests in progress on the same path at that moment, this one
    included; ``total_concurrency`` counts them on every path.
    """

    method: str
    path: str
    headers: CIMultiDictProxy[str]
    body: bytes
    arrived_at: float
    concurrency: int
    total_concurrency: int


class Receiver:
    """An aiohttp server on ``127.0.0.1`` (ephemeral port) answering as scripted, recording all.

    Pass ``ssl_context`` to serve HTTPS (e.g. with a ``trustme`` certificate). Client disconnects
    cancel the handler, so ``delay_s`` or ``endless`` replies end when the sender gives up and
    the server stops promptly at exit.
    """

    def __init__(self, *, ssl_context: ssl.SSLContext | None = None) -> None:
        self._ssl_context = ssl_context
        self._scripts: dict[str, list[Reply]] = {}
        self._received: list[Received] = []
        self._active: Counter[str] = Counter()
        self._max_concurrency: defaultdict[str, int] = defaultdict(int)
        self._max_total_concurrency = 0
        self._arrived = asyncio.Condition()
        self._runner: web.AppRunner | None = None
        self._port = 0

    async def __aenter__(self) -> Receiver:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self._runner = web.AppRunner(
            app, access_log=None, handler_cancellation=True, shutdown_timeout=1.0
        )
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0, ssl_context=self._ssl_context)
        await site.start()
        self._port = self._runner.addresses[0][1]
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    @property
    def port(self) -> int:
        """The TCP port the server listens on."""
        return self._port

    def url(self, path: str = "/") -> str:
        """The absolute URL of ``path`` on this receiver (https when serving TLS)."""
        scheme = "https" if self._ssl_context is not None else "http"
        return f"{scheme}://127.0.0.1:{self._port}{path}"

    def script(self, path: str, *replies: Reply) -> None:
        """Answer the next requests to ``path`` with ``replies`` in order; the last one repeats."""
        if not replies:
            raise ValueError("script() needs at least one Reply")
        self._scripts[path] = list(replies)

    @property
    def received(self) -> list[Received]:
        """Every request so far, in arrival order (a copy)."""
        return list(self._received)

    def received_on(self, path: str | None) -> list[Received]:
        """The requests to ``path`` (all of them for None), in arrival order."""
        return [r for r in self._received if path is None or r.path == path]

    def max_concurrency(self, path: str | None = None) -> int:
        """Most requests in progress at once on ``path``, or on the whole receiver for None."""
        return self._max_total_concurrency if path is None else self._max_concurrency[path]

    async def wait_for(
        self, count: int, path: str | None = None, timeout_s: float = 10.0
    ) -> list[Received]:
        """Wait until at least ``count`` requests (to ``path``, if given) arrived; return them.

        Fails the test with an ``AssertionError`` after ``timeout_s``.
        """
        try:
            async with asyncio.timeout(timeout_s), self._arrived:
                await self._arrived.wait_for(lambda: len(self.received_on(path)) >= count)
        except TimeoutError:
            got = len(self.received_on(path))
            raise AssertionError(
                f"expected {count} requests to {path or 'any path'} in {timeout_s} s, got {got}"
            ) from None
        return self.received_on(path)

    def _next_reply(self, path: str) -> Reply:
        script = self._scripts.get(path)
        if not script:
            return Reply()
        return script.pop(0) if len(script) > 1 else script[0]

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        arrived_at = time.monotonic()
        path = request.path
        self._active[path] += 1
        concurrency, total = self._active[path], self._active.total()
        self._max_concurrency[path] = max(self._max_concurrency[path], concurrency)
        self._max_total_concurrency = max(self._max_total_concurrency, total)
        try:
            body = await request.read()
            async with self._arrived:
                self._received.append(
                    Received(
                        request.method, path, request.headers, body, arrived_at, concurrency, total
                    )
                )
                self._arrived.notify_all()
            return await self._answer(request, self._next_reply(path))
        finally:
            self._active[path] -= 1

    async def _answer(self, request: web.Request, reply: Reply) -> web.StreamResponse:
        if reply.delay_s:
            await asyncio.sleep(reply.delay_s)
        if reply.until is not None:
            await reply.until.wait()
        if reply.reset or reply.raw is not None:
            await _misbehave(request, reply)
        headers = dict(reply.headers)
        if reply.header_bytes:
            headers["X-Enormous"] = "h" * reply.header_bytes
        if not (reply.extra_body_bytes or reply.endless or reply.drip_s is not None):
            return web.Response(status=reply.status, body=reply.body, headers=headers)
        response = web.StreamResponse(status=reply.status, headers=headers)
        if not reply.endless:
            response.content_length = len(reply.body) + reply.extra_body_bytes
        await response.prepare(request)
        try:
            if reply.drip_s is not None:
                for i in range(len(reply.body)):
                    await response.write(reply.body[i : i + 1])
                    await asyncio.sleep(reply.drip_s)
            else:
                await response.write(reply.body)
                await _write_filler(response, None if reply.endless else reply.extra_body_bytes)
            await response.write_eof()
        except ConnectionError:
            pass  # the client stopped reading, as a sender with an excerpt cap should
        return response


async def _write_filler(response: web.StreamResponse, size: int | None) -> None:
    """Write ``size`` filler bytes (forever for None) in chunks."""
    chunk = b"x" * _CHUNK
    remaining = size
    while remaining is None or remaining > 0:
        piece = chunk if remaining is None else chunk[:remaining]
        await response.write(piece)
        if remaining is not None:
            remaining -= len(piece)


async def _misbehave(request: web.Request, reply: Reply) -> None:
    """Break the connection instead of answering; never returns (the handler is cancelled)."""
    transport = request.transport
    assert transport is not None
    if reply.reset:
        sock = transport.get_extra_info("socket")
        # SO_LINGER with a zero timeout makes close() send RST instead of FIN.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        transport.abort()
    else:
        assert reply.raw is not None
        if reply.drip_s is None:
            transport.write(reply.raw)
        else:
            for i in range(len(reply.raw)):
                transport.write(reply.raw[i : i + 1])
                await asyncio.sleep(reply.drip_s)
        transport.close()
    # Losing the connection cancels this handler (handler_cancellation=True).
    await asyncio.Event().wait()
