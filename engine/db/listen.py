"""The LISTEN connection's calls: open it on the channels, probe it, notice its loss, close it.

A connection of its own, never a pool connection (a pool's reset runs ``UNLISTEN *``); the
reconnecting and the probing schedule are engine.delivery.listener's. Every connection-level
failure arrives as :class:`engine.db.pool.DatabaseUnavailable`, so the listener names no asyncpg
error.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping

import asyncpg

from engine.db.pool import connect, unavailable_when_disconnected


class ListenConnection:
    """A connection that LISTENs; ``lost`` is set when the server or the network ends it.

    The channel callbacks are called with ``call_soon`` by asyncpg: they must only set flags.
    """

    def __init__(self, conn: asyncpg.Connection) -> None:
        self._conn = conn
        self.lost = asyncio.Event()
        self.backend_pid = conn.get_server_pid()
        conn.add_termination_listener(lambda _conn: self.lost.set())

    @classmethod
    async def open(cls, url: str, channels: Mapping[str, Callable[[], None]]) -> ListenConnection:
        """Connect and LISTEN on each channel, calling its callback on every NOTIFY."""
        listening = cls(await connect(url))
        try:
            with unavailable_when_disconnected(listening._conn):
                for channel, callback in channels.items():
                    await listening._conn.add_listener(channel, _ignoring_payload(callback))
        except BaseException:
            listening.close()
            raise
        return listening

    async def probe(self, timeout_s: float) -> None:
        """A round trip within ``timeout_s``, so that a silent network loss is noticed."""
        with unavailable_when_disconnected(self._conn):
            await self._conn.fetchval("SELECT 1", timeout=timeout_s)

    def close(self) -> None:
        """Drop the connection at once: there is nothing to finish on it."""
        if not self._conn.is_closed():
            self._conn.terminate()


def _ignoring_payload(callback: Callable[[], None]) -> Callable[..., None]:
    """A NOTIFY is only a hint: its payload (ids at most) is never needed."""
    return lambda *_: callback()
