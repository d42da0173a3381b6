"""A TCP proxy in front of Postgres that a test can cut and restore (asyncpg ``_testbase/fuzzer``).

The engine connects through the proxy; the test's own connections go straight to the server, so
the test keeps watching the database while the engine has lost it::

    async with PgProxy(db_url) as proxy:
        engine = Engine(settings, proxy.url)
        ...
        proxy.cut()      # every proxied connection drops; new ones are refused
        proxy.restore()  # connections work again

``cut(hold=True)`` models a network partition instead of a refusal: new connections are accepted
but get no answer until ``restore()``, which then forwards them (a peer that was merely slow).
Bytes are forwarded untouched, so SSL negotiation and the protocol pass through unchanged.
"""

from __future__ import annotations

import asyncio
import contextlib
from types import TracebackType
from urllib.parse import urlsplit, urlunsplit

__all__ = ["PgProxy"]

_CHUNK = 64 * 1024


class PgProxy:
    """Listens on ``127.0.0.1:0`` and forwards to the host and port of ``server_url``."""

    def __init__(self, server_url: str) -> None:
        parts = urlsplit(server_url)
        if parts.hostname is None:
            raise ValueError("the server URL names no host")
        self._server_url = server_url
        self._target = (parts.hostname, parts.port or 5432)
        self._server: asyncio.Server | None = None
        self._port = 0
        self._cut = False
        self._hold = False
        self._restored = asyncio.Event()
        self._restored.set()
        self._writers: set[asyncio.StreamWriter] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self.accepted = 0  # connections accepted, refused and held ones included
        self.refused = 0  # connections closed at once because the proxy was cut

    async def __aenter__(self) -> PgProxy:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        self._port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    @property
    def url(self) -> str:
        """``server_url`` with the proxy's address in place of the server's."""
        parts = urlsplit(self._server_url)
        credentials = parts.netloc.rpartition("@")[0]
        netloc = (
            f"{credentials}@127.0.0.1:{self._port}" if credentials else f"127.0.0.1:{self._port}"
        )
        return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))

    @property
    def is_cut(self) -> bool:
        return self._cut

    def cut(self, *, hold: bool = False) -> None:
        """Drop every proxied connection; refuse new ones (with ``hold``: leave them hanging)."""
        self._cut, self._hold = True, hold
        self._restored.clear()
        for writer in list(self._writers):
            _abort(writer)
        self._writers.clear()

    def restore(self) -> None:
        """Forward connections again, held ones included."""
        self._cut = self._hold = False
        self._restored.set()

    async def close(self) -> None:
        """Stop listening and drop every connection."""
        if self._server is not None:
            self._server.close()
            self._server = None
        for writer in list(self._writers):
            _abort(writer)
        self._writers.clear()
        self._restored.set()  # let held connections end
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.get_running_loop().create_task(self._serve(reader, writer))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.accepted += 1
        if self._cut and not self._hold:
            self.refused += 1
            _abort(writer)
            return
        self._writers.add(writer)
        upstream: asyncio.StreamWriter | None = None
        try:
            await self._restored.wait()  # a held connection waits here, unanswered
            if writer.is_closing() or self._server is None:
                return
            up_reader, upstream = await asyncio.open_connection(*self._target)
            self._writers.add(upstream)
            async with asyncio.TaskGroup() as tg:
                tg.create_task(_pump(reader, upstream))
                tg.create_task(_pump(up_reader, writer))
        except OSError:
            pass  # the server refused the proxy: the client sees its connection dropped
        finally:
            for w in (writer, upstream):
                if w is not None:
                    _abort(w)
                    self._writers.discard(w)


async def _pump(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Copy bytes until either side closes; then close the other side too."""
    with contextlib.suppress(OSError):
        while data := await reader.read(_CHUNK):
            writer.write(data)
            await writer.drain()
    _abort(writer)


def _abort(writer: asyncio.StreamWriter) -> None:
    """Close at once, without waiting to flush: what a dropped connection looks like."""
    transport = writer.transport
    if not transport.is_closing():
        transport.abort()
