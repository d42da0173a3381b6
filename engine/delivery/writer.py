"""The result writer: attempt outcomes go to Postgres in batches through ``record_attempts_v1``.

Batching falls out of the loop: while one batch is being written, the next accumulates. When the
database is unreachable the outcomes stay in memory and are retried with backoff; the buffer is
bounded by making actors wait (``has_room``) before they start another attempt, so nothing is
ever dropped to make room. What is still unwritten when the process must exit is logged with its
count: those deliveries' leases expire and they are sent again (at-least-once).
"""

from __future__ import annotations

import asyncio
import collections
from collections.abc import Callable, Sequence

from engine.db.pool import DatabaseUnavailable
from engine.delivery.housekeeping import OutageLog
from engine.delivery.ports import AttemptLog
from engine.models import Outcome, Recorded

RETRY_BACKOFF_S = (0.1, 0.25, 0.5, 1.0, 2.0)


class ResultWriter:
    """Buffers outcomes and writes them in batches; see the module docstring."""

    def __init__(
        self,
        store: AttemptLog,
        *,
        batch: int,
        buffer_max: int,
        on_written: Callable[[Sequence[Outcome], Sequence[Recorded]], None] | None = None,
    ) -> None:
        self._store = store
        self._batch = batch
        self._buffer_max = buffer_max
        self._buffer: collections.deque[Outcome] = collections.deque()
        self._pending = asyncio.Event()
        self._room = asyncio.Event()
        self._room.set()
        self._on_written = on_written
        self._closing = False
        self._outage = OutageLog("results_write_failed", "results_write_recovered")
        self.written = 0

    @property
    def healthy(self) -> bool:
        """False while the database is away (the last write failed)."""
        return not self._outage.failures

    @property
    def buffered(self) -> int:
        return len(self._buffer)

    def submit(self, outcome: Outcome) -> None:
        """Queue one outcome. Never blocks and never drops: the bound is kept by has_room."""
        self._buffer.append(outcome)
        self._pending.set()
        if len(self._buffer) >= self._buffer_max:
            self._room.clear()

    def has_room(self) -> bool:
        """False while the buffer is at its bound: actors then start no new attempts."""
        return self._room.is_set()

    def close(self) -> None:
        """No more outcomes will come: run() returns once the buffer is written."""
        self._closing = True
        self._pending.set()

    async def run(self) -> None:
        """Write batches until close() was called and the buffer is empty.

        DatabaseUnavailable, a lost conflict with an operator's action included, is waited out
        with backoff and the same batch written again; any other error is a bug and propagates.
        """
        while True:
            if not self._buffer:
                if self._closing:
                    return
                self._pending.clear()
                await self._pending.wait()
                continue
            batch = [self._buffer[i] for i in range(min(self._batch, len(self._buffer)))]
            try:
                recorded = await self._store.record(batch)
            except DatabaseUnavailable as exc:
                delay = RETRY_BACKOFF_S[min(self._outage.failures, len(RETRY_BACKOFF_S) - 1)]
                self._outage.failed(exc, buffered=len(self._buffer))
                await asyncio.sleep(delay)
                continue
            for _ in batch:
                self._buffer.popleft()
            self._outage.succeeded()
            self.written += len(batch)
            if len(self._buffer) < self._buffer_max:
                self._room.set()
            if self._on_written is not None:
                self._on_written(batch, recorded)

    def abandon(self) -> int:
        """Drop what could not be written before exit; returns the count, which the caller logs."""
        count = len(self._buffer)
        self._buffer.clear()
        return count
