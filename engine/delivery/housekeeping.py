"""The engine's background upkeep: a loop that waits out the database, and the calls it runs.

:func:`periodic` runs one call, then waits for its period (or a wake-up, or the stop Event), again
and again. While the database is away it keeps trying at every period and says so twice, through
an :class:`OutageLog`: once when the outage begins, once when it ends. The dispatcher and the
result writer, which have loops of their own, log their outages through the same class.

The calls: partition maintenance (with per-account retention), the queue-depth gauges, and the
settings row's reload (:class:`PolicyReload`); the idle vacuum (engine.delivery.idle_vacuum) runs
on the same loop.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import structlog

from engine.db.pool import DatabaseUnavailable
from engine.db.queue import DeliveryQueue
from engine.metrics import Metrics
from engine.models import Policy

log = structlog.get_logger("engine.delivery.housekeeping")


async def wait_first(*events: asyncio.Event, seconds: float | None = None) -> bool:
    """Wait until any of ``events`` is set or ``seconds`` pass; True if an event fired.

    Waiter tasks are cancelled before returning, so nothing is left pending.
    """
    if any(e.is_set() for e in events):
        return True
    waiters = [asyncio.ensure_future(e.wait()) for e in events]
    try:
        done, _ = await asyncio.wait(waiters, timeout=seconds, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for waiter in waiters:
            waiter.cancel()
        await asyncio.gather(*waiters, return_exceptions=True)
    return bool(done)


class OutageLog:
    """Logs a database outage once as it begins (a warning) and once as it ends (info).

    A part that retries every second must not turn an outage into a warning a second. The
    warning carries the first error; the recovery line, ``after_failures``, how many calls failed.
    """

    def __init__(self, failed_event: str, recovered_event: str) -> None:
        self._failed_event = failed_event
        self._recovered_event = recovered_event
        self.failures = 0  # consecutive failed calls: 0 while the database answers

    def failed(self, exc: DatabaseUnavailable, **context: object) -> None:
        """A call failed: warn if it is the first of an outage."""
        if not self.failures:
            log.warning(self._failed_event, error=repr(exc), **context)
        self.failures += 1

    def succeeded(self) -> None:
        """A call succeeded: say the outage ended, if there was one."""
        if self.failures:
            log.info(self._recovered_event, after_failures=self.failures)
            self.failures = 0


async def periodic(
    call: Callable[[], Awaitable[bool | None]],
    *,
    every_s: float,
    stop: asyncio.Event,
    outage: OutageLog,
    wake: asyncio.Event | None = None,
) -> None:
    """Call ``call``, then wait ``every_s`` (or until ``wake`` is set), until ``stop`` is set.

    DatabaseUnavailable from ``call`` goes to ``outage`` and the loop tries again at its next
    period; any other error propagates and ends the loop (a bug: the engine's TaskGroup then
    stops the process). ``call`` returns False when it has nothing left to do ever, which ends
    the loop too. ``wake`` is cleared before each call, so a wake-up during one is not lost.
    """
    wakes = (stop,) if wake is None else (stop, wake)
    while not stop.is_set():
        try:
            again = await call()
        except DatabaseUnavailable as exc:
            outage.failed(exc)
        else:
            outage.succeeded()
            if again is False:
                return
        await wait_first(*wakes, seconds=every_s)
        if wake is not None:
            wake.clear()


# Rows per table and account in one per-account retention transaction: short enough that the
# transaction holds few row locks and little of the vacuum horizon back.
RETENTION_BATCH = 500


async def maintain_partitions(store: DeliveryQueue, stop: asyncio.Event | None = None) -> None:
    """Delete what accounts with a shorter retention of their own keep beyond it, then create the
    partitions ahead and drop those past the global retention (``webhooks.maintain_v1``).

    The purge runs batch after batch, each its own transaction, until one deletes nothing or
    ``stop`` is set (the next run goes on from there). It runs first because it finds an
    account's rows through their ended deliveries (``delivery_outcomes``): a drop of a day's
    outcomes whose events a live delivery of that day keeps would leave those events out of its
    reach until the live delivery ends. The partitions are maintained even when ``stop`` is set.
    """
    purged = 0
    while stop is None or not stop.is_set():
        deleted = await store.purge_account_retention(RETENTION_BATCH)
        if not deleted:
            break
        purged += deleted
    if purged:
        log.info("account_retention_enforced", rows_deleted=purged)
    result = await store.maintain()
    if result.get("created") or result.get("dropped"):
        log.info("partitions_maintained", **result)


async def count_queue_depths(store: DeliveryQueue, metrics: Metrics) -> None:
    """Re-count the queue-depth gauges (see engine.metrics).

    A failed count leaves the last values, whose age queue_depth_updated_timestamp_seconds shows.
    """
    metrics.set_queue_depths(await store.queue_depths())


class PolicyReload:
    """The settings row as the engine last read it; ``reload`` reads it again and applies a change.

    The engine reads the row before it builds its parts, so ``current`` always holds a policy.
    """

    def __init__(
        self, store: DeliveryQueue, current: Policy, on_change: Callable[[Policy], None]
    ) -> None:
        self._store = store
        self.current = current
        self._on_change = on_change

    def lease_s(self) -> float:
        """The lease of a claim, as the settings row says now."""
        return self.current.lease_duration_s

    async def reload(self) -> None:
        policy = await self._store.policy()
        if policy == self.current:
            return
        log.info(
            "settings_reloaded",
            allow_http=policy.allow_http,
            allow_private_networks=policy.allow_private_networks,
        )
        self.current = policy
        self._on_change(policy)
