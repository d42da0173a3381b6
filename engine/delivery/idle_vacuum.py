"""Vacuum the hot table when the engine goes idle after a burst, not when autovacuum comes round.

Every delivered delivery is deleted from ``webhooks.deliveries``, and its index entries stay until
a vacuum removes them. The claim's loose index scan starts at the low end of the per-endpoint
index, where those entries pile up, and walks them on every claim until autovacuum comes round,
which its naptime (a server-wide setting) can delay. The engine knows when the table has gone
quiet, so it checks then, at most every ``vacuum_check_s``, and vacuums once the statistics count
``vacuum_dead_rows`` more dead rows than its last vacuum left behind (some cannot go while an
older transaction might still see them). The figures: docs/decisions/0003-idle-vacuum.md.

It needs to own the table (or, from Postgres 17, the MAINTAIN privilege); the engine does when it
migrates the schema. Without that, Postgres skips the table with a warning: logged once, and the
engine leaves the table to autovacuum.
"""

from __future__ import annotations

import asyncio
import time
from typing import Literal

import structlog

from engine.db.queue import DeliveryQueue
from engine.delivery.housekeeping import OutageLog, periodic, wait_first

log = structlog.get_logger("engine.delivery.idle_vacuum")

LOCK_NOT_AVAILABLE = "55P03"  # SKIP_LOCKED: another vacuum (autovacuum, most likely) is at it
VacuumOutcome = Literal["vacuumed", "skipped", "refused", "stopped"]


class IdleVacuum:
    """See the module docstring. ``engine_idle`` is the dispatcher's hook; ``run`` the task."""

    def __init__(self, store: DeliveryQueue, *, dead_rows: int, check_s: float) -> None:
        self._store = store
        self._dead_rows = dead_rows
        self._check_s = check_s
        self._idle = asyncio.Event()
        self._left = 0  # dead rows the last vacuum could not remove
        self.checks = 0  # reads of the statistics
        self.last_dead = 0  # dead rows the last read counted
        self.vacuums = 0  # vacuums that ran (not skipped, not refused)

    def engine_idle(self) -> None:
        """The dispatcher found nothing due: a good time to look."""
        self._idle.set()

    async def run(self, stop: asyncio.Event) -> None:
        """Check on each idle moment, ``check_s`` apart, until stop or a refusal."""
        outage = OutageLog("hot_table_vacuum_failed", "hot_table_vacuum_recovered")
        await periodic(
            lambda: self._check_when_idle(stop), every_s=self._check_s, stop=stop, outage=outage
        )

    async def _check_when_idle(self, stop: asyncio.Event) -> bool:
        """Wait for an idle moment, then vacuum if enough dead rows piled up; False once
        Postgres refused, which ends the task."""
        await wait_first(stop, self._idle)
        if stop.is_set():
            return True
        self._idle.clear()
        dead = await self._store.hot_table_dead_rows()
        self.checks += 1
        self.last_dead = dead
        self._left = min(self._left, dead)  # autovacuum, or another engine, got there too
        if dead - self._left >= self._dead_rows:
            outcome = await self._vacuum(dead, stop)
            if outcome == "refused":
                return False
            if outcome == "vacuumed":
                self._left = await self._store.hot_table_dead_rows()
        return True

    async def _vacuum(self, dead: int, stop: asyncio.Event) -> VacuumOutcome:
        """Vacuum once; given up at a stop, tried again at the next check if the table was locked,
        never again if Postgres refused."""
        started = time.monotonic()
        vacuum = asyncio.ensure_future(self._store.vacuum_hot_table())
        stopping = asyncio.ensure_future(stop.wait())
        try:
            await asyncio.wait([vacuum, stopping], return_when=asyncio.FIRST_COMPLETED)
        finally:
            stopping.cancel()
            if not vacuum.done():  # a stop: asyncpg cancels the statement; autovacuum will do it
                vacuum.cancel()
                await asyncio.gather(vacuum, return_exceptions=True)
        if vacuum.cancelled():
            return "stopped"
        warnings = vacuum.result()
        refused = [w for w in warnings if w.sqlstate != LOCK_NOT_AVAILABLE]
        if refused:
            log.warning(
                "hot_table_vacuum_refused",
                message=refused[0].message,
                hint="let the engine own webhooks.deliveries, or leave it to autovacuum",
            )
            return "refused"
        if warnings:
            log.info("hot_table_vacuum_skipped", reason="another vacuum holds the table")
            return "skipped"
        self.vacuums += 1
        log.info(
            "hot_table_vacuumed",
            dead_rows=dead,
            duration_ms=round((time.monotonic() - started) * 1000, 1),
        )
        return "vacuumed"
