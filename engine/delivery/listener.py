"""The LISTEN connection: turns NOTIFYs into wake-ups, and survives losing them.

It uses its own connection, never a pool connection (a pool's reset runs ``UNLISTEN *``), and must
not go through PgBouncer transaction pooling. Notifications are only hints: after every (re)connect
``on_connect`` asks for a full sweep, because whatever was sent while disconnected is gone. The
callbacks only set flags (asyncpg calls them with ``call_soon``).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import structlog

from engine.db.listen import ListenConnection
from engine.db.pool import DatabaseUnavailable
from engine.delivery.housekeeping import wait_first

log = structlog.get_logger("engine.delivery.listener")

WAKEUP_CHANNEL = "webhooks_wakeup"
SETTINGS_CHANNEL = "webhooks_settings"
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
        self._channels = {WAKEUP_CHANNEL: on_wakeup, SETTINGS_CHANNEL: on_settings}
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
            except DatabaseUnavailable as exc:
                log.warning("listener_lost", error=repr(exc), retry_in_s=self._backoff_s)
            if stop.is_set():
                break
            await wait_first(stop, seconds=self._backoff_s)
            self._backoff_s = min(self._backoff_s * 2, BACKOFF_MAX_S)

    async def _session(self, stop: asyncio.Event) -> None:
        conn = await ListenConnection.open(self._dsn, self._channels)
        try:
            if self.backend_pid is not None:
                self.reconnects += 1
            self.connected = True
            self.backend_pid = conn.backend_pid
            self._backoff_s = BACKOFF_MIN_S  # up again: a later loss is retried at once
            log.info("listener_connected", backend_pid=self.backend_pid)
            self._on_connect()
            while not stop.is_set():
                if await wait_first(stop, conn.lost, seconds=self._probe_s):
                    if conn.lost.is_set():
                        raise DatabaseUnavailable("the listener's connection closed")
                    continue
                await conn.probe(timeout_s=self._probe_s)
        finally:
            self.connected = False
            conn.close()
