"""The LISTEN connection: turns NOTIFYs into wake-ups, and survives losing them.

It uses its own connection, never a pool connection (a pool's reset runs ``UNLISTEN *``), and must
not go through PgBouncer transaction pooling. Notifications are only hints: after every (re)connect
``on_connect`` asks for a full sweep, because whatever was sent while disconnected is gone. The
callbacks only set flags (asyncpg calls them with ``call_soon``).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import asyncpg
import structlog

from engine.delivery.periodic import wait_first

log = structlog.get_logger("engine.delivery.listener")

WAKEUP_CHANNEL = "webhooks_wakeup"
SETTINGS_CHANNEL = "webhooks_settings"
CONNECT_TIMEOUT_S = 10.0
BACKOFF_MIN_S = 0.1
BACKOFF_MAX_S = 10.0


class Listener:
    """LISTEN on the wake-up and settings channels; probe; reconnect with backoff."""

    def __init__(
        self,
        dsn: str,
        *,
        on_wakeup: Callable[[], None],
        on_settings: Callable[[], None],
        on_connect: Callable[[], None],
        probe_s: float,
    ) -> None:
        self._dsn = dsn
        self._on_wakeup = on_wakeup
        self._on_settings = on_settings
        self._on_connect = on_connect
        self._probe_s = probe_s
        self.connected = False
        self.reconnects = 0  # connections established after the first one
        self.backend_pid: int | None = None
        self._backoff_s = BACKOFF_MIN_S

    async def run(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            try:
                await self._session(stop)
            # InternalClientError: how asyncpg sometimes reports a connection the server closed
            # under a query (the probe racing a pg_terminate_backend).
            except (
                OSError,
                TimeoutError,
                asyncpg.PostgresError,
                asyncpg.InterfaceError,
                asyncpg.InternalClientError,
            ) as exc:
                log.warning("listener_lost", error=repr(exc), retry_in_s=self._backoff_s)
            if stop.is_set():
                break
            await wait_first(stop, seconds=self._backoff_s)
            self._backoff_s = min(self._backoff_s * 2, BACKOFF_MAX_S)

    async def _session(self, stop: asyncio.Event) -> None:
        conn = await asyncpg.connect(self._dsn, timeout=CONNECT_TIMEOUT_S)
        lost = asyncio.Event()
        conn.add_termination_listener(lambda _c: lost.set())
        try:
            await conn.add_listener(WAKEUP_CHANNEL, lambda *_: self._on_wakeup())
            await conn.add_listener(SETTINGS_CHANNEL, lambda *_: self._on_settings())
            if self.backend_pid is not None:
                self.reconnects += 1
            self.connected = True
            self.backend_pid = conn.get_server_pid()
            self._backoff_s = BACKOFF_MIN_S  # up again: a later loss is retried at once
            log.info("listener_connected", backend_pid=self.backend_pid)
            self._on_connect()
            while not stop.is_set():
                if await wait_first(stop, lost, seconds=self._probe_s):
                    if lost.is_set():
                        raise ConnectionError("listener connection closed")
                    continue
                await conn.fetchval("SELECT 1", timeout=self._probe_s)
        finally:
            self.connected = False
            if not conn.is_closed():
                conn.terminate()
