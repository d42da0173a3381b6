"""The dispatcher: claims due deliveries for actors with room, and supervises the actors.

Back-pressure stays in the database: a claim asks for at most each actor's free room (endpoints
without an actor get a default room), so a backlog never floods memory and one endpoint's backlog
never starves another's new work. Actors are supervised, not grouped: a crash is logged and the
actor restarted with backoff, without touching the others. An actor and its task live only while
it has work (engine.delivery.actor), so what the engine holds follows what it has claimed, capped
by ``max_outstanding``, and never the number of endpoints a burst touched: quiet endpoints cost
nothing, and a claim's per-endpoint rooms list only the endpoints with work in hand.

The waiting mark (``webhooks.engine_state.waiting_until``, sql/functions/40_claim.sql): an idle
engine whose listener is connected asks the app's ``emit`` for a NOTIFY by setting the mark, and
refreshes it while it stays idle, because the mark expires; a claim that leases rows clears it. An
engine without a connected listener (``WEBHOOKS_LISTEN=false``, or a listener reconnecting) never
sets it: NOTIFYs it cannot receive would only slow the app's commits.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from datetime import UTC, datetime
from uuid import UUID

import structlog

from engine.db.pool import DatabaseUnavailable
from engine.delivery.actor import ActorDeps, EndpointActor
from engine.delivery.housekeeping import OutageLog, wait_first
from engine.delivery.ports import ClaimQueue
from engine.models import DEFAULT_MAX_IN_FLIGHT, Delivery, EndpointConfig

log = structlog.get_logger("engine.delivery.dispatcher")

RESTART_BACKOFF_S = (0.1, 0.5, 2.0, 5.0)
# How often an idle engine refreshes its waiting mark: a quarter of the mark's lifetime
# (webhooks.engine_waiting_ttl_v1). The lifetime is kept short so that an engine that died asleep
# soon stops costing the app NOTIFYs; refreshing several times within it lets a refresh come late
# (a slow claim cycle) or fail in a brief database blip without a live engine losing its wake-ups.
# A lapsed mark costs only latency (the poll still finds the work); a refresh costs one write of a
# one-row unlogged table, so refreshing more often would buy nothing.
WAITING_REFRESH_S = 5.0
# The refresh is timed on the event loop's clock, the one that wakes the engine for it: uvloop keeps
# that clock in whole milliseconds, read once per loop iteration, so a wake-up timed on it can come
# before time.monotonic() reaches the same moment. A wake-up that found its refresh not yet due
# would claim again at once and sleep a fraction of a millisecond. This much early counts as due.
REFRESH_CLOCK_SLACK_S = 0.002


class Dispatcher:
    """Owns the actors. run() returns after a stop, once every started attempt has an outcome.

    ``listening`` says whether this engine's listener is connected now; only then does an idle
    engine set the waiting mark. A stopping engine leaves its mark to expire rather than clearing
    it, since another engine may be asleep under the same mark.
    """

    def __init__(
        self,
        store: ClaimQueue,
        deps: ActorDeps,
        *,
        poll_interval_s: float,
        claim_batch: int,
        max_outstanding: int,
        shutdown_grace_s: float,
        listening: Callable[[], bool],
        on_idle: Callable[[], None] | None = None,
    ) -> None:
        self._store = store
        self._deps = deps
        self._poll_s = poll_interval_s
        self._max_outstanding = max_outstanding
        self._claim_batch = claim_batch
        self._grace_s = shutdown_grace_s
        self._listening = listening
        self._on_idle = on_idle
        self.actors: dict[UUID, EndpointActor] = {}
        self._supervisors: dict[UUID, asyncio.Task[None]] = {}
        self._wake = asyncio.Event()
        self._after: UUID | None = None
        # The mark as this engine last wrote it (None: it set the mark, but a write failed since).
        # False at start: an engine never clears a mark it did not set, which may be another
        # engine's.
        self._waiting: bool | None = False
        self._refresh_at = 0.0  # the loop's time of the mark's next refresh, while waiting
        # Once per outage, as the result writer does: a poll every second must not turn a
        # database outage into a warning a second.
        self._outage = OutageLog("claim_failed", "claim_recovered")
        self.crashes = 0

    def wake(self) -> None:
        """Claim soon (a NOTIFY arrived, an actor has room, a result was written)."""
        self._wake.set()

    @property
    def default_room(self) -> int:
        # Endpoints without an actor yet are sized as if they had the default max_in_flight.
        return DEFAULT_MAX_IN_FLIGHT * self._deps.queue_per_in_flight

    async def run(self, stop: asyncio.Event) -> None:
        try:
            while not stop.is_set():
                self._wake.clear()
                timeout = await self._claim_cycle(stop)
                await wait_first(self._wake, stop, seconds=timeout)
        finally:
            await self._shutdown()

    async def _claim_cycle(self, stop: asyncio.Event) -> float:
        """Claim what fits; return how long to sleep before the next cycle."""
        try:
            idle = await self._claim_all(stop)
            marked = await self._mark_waiting(idle and self._listening())
            if not idle:
                return self._poll_s
            if self._on_idle is not None:
                self._on_idle()
            next_due = await self._store.next_due_at()
        except DatabaseUnavailable as exc:
            self._outage.failed(exc)
            if self._waiting:  # it may have lapsed meanwhile: the next cycle writes it afresh
                self._waiting = None
            return self._poll_s
        timeout = self._poll_s
        if next_due is not None:
            due_in_s = (next_due - datetime.now(UTC)).total_seconds()
            # Already due, although the claim that just ran took nothing while every actor had
            # room: what is due cannot go now (a strict endpoint's head waits for its retry) or
            # fell due in the instant since. The poll, a NOTIFY or a result comes back for it;
            # claiming again at once would spin for as long as that head waits. Except once,
            # right after this cycle set the mark: an event committed between the empty claim
            # and the mark's commit found no mark, so no NOTIFY will come for it.
            if due_in_s > 0:
                timeout = min(timeout, max(0.005, due_in_s))
            elif marked:
                timeout = 0.0
        if self._waiting:  # a poll interval longer than the refresh period must not let it lapse
            timeout = min(timeout, max(0.0, self._refresh_at - _loop_time()))
        return timeout

    async def _claim_all(self, stop: asyncio.Event) -> bool:
        """Claim until nothing more fits or is due; True when the engine is idle.

        Idle means nothing was due although every actor had room and no result was waiting to
        be written: then the app's emit() must NOTIFY us. With full actors we wake ourselves when
        room appears, and a written result wakes us too. Besides each actor's
        room, everything claimed but not finished is capped in all (``max_outstanding``), so a
        backlog over thousands of endpoints cannot pile up memory, nor leases that would run out
        before their turn.
        """
        while not stop.is_set():
            rooms = {eid: actor.room() for eid, actor in self.actors.items()}
            outstanding = sum(a.queued + a.in_flight for a in self.actors.values())
            budget = min(self._claim_batch, self._max_outstanding - outstanding)
            if budget <= 0:
                return False
            rows = await self._store.claim(
                rooms, default_room=self.default_room, max_rows=budget, after=self._after
            )
            if rows:
                self._waiting = False  # claim_v2 cleared the waiting mark as it leased them
            self._outage.succeeded()
            for delivery, config in rows:
                self._actor_for(config).offer(delivery)
            if len(rows) < budget:
                self._after = None
                # Results waiting to be written hold leases that the claim counts against their
                # endpoints' max_in_flight: their write wakes us, and the claim after it may take
                # what this one could not, so we are not idle while they wait.
                return (
                    not rows
                    and all(room > 0 for room in rooms.values())
                    and not self._deps.writer.buffered
                )
            self._after = rows[-1][1].id
        return False

    async def _mark_waiting(self, waiting: bool) -> bool:
        """Set or clear the waiting mark on a change; refresh it while it stays set. True when
        this call set it.

        The refresh extends only a mark that still stands: if another engine's claim cleared it,
        that engine is busy, and this one finds work by its poll until it next goes to sleep.
        """
        if self._waiting is not waiting:
            await self._store.set_engine_waiting(waiting)
            self._waiting = waiting
            self._refresh_at = _loop_time() + WAITING_REFRESH_S
            return waiting
        if waiting and _loop_time() >= self._refresh_at - REFRESH_CLOCK_SLACK_S:
            await self._store.refresh_engine_waiting()
            self._refresh_at = _loop_time() + WAITING_REFRESH_S
        return False

    def _actor_for(self, config: EndpointConfig) -> EndpointActor:
        actor = self.actors.get(config.id)
        if actor is None:
            actor = EndpointActor(config, self._deps)
            self.actors[config.id] = actor
            self._supervisors[config.id] = asyncio.get_running_loop().create_task(
                self._supervise(actor), name=f"actor-{config.id}"
            )
        else:
            actor.update(config)
        return actor

    async def _supervise(self, actor: EndpointActor) -> None:
        failures = 0
        try:
            while True:
                try:
                    await actor.run()
                except Exception:  # isolate one endpoint's crash from the others
                    self.crashes += 1
                    delay = RESTART_BACKOFF_S[min(failures, len(RESTART_BACKOFF_S) - 1)]
                    failures += 1
                    log.exception(
                        "actor_crashed", endpoint_id=actor.endpoint_id, restart_in_s=delay
                    )
                    await asyncio.sleep(delay)
                else:
                    return
        finally:
            if (
                self.actors.get(actor.config.id) is actor
                and not actor.queued
                and not actor.in_flight
            ):
                del self.actors[actor.config.id]
                self._supervisors.pop(actor.config.id, None)

    async def _shutdown(self) -> None:
        """Stop claiming; release what never started; let in-flight attempts finish."""
        unstarted: list[Delivery] = []
        for actor in self.actors.values():
            unstarted.extend(actor.stop())
        if unstarted:
            try:
                released = await self._store.release(unstarted)
                log.info("leases_released", count=released)
            except DatabaseUnavailable as exc:  # their leases simply expire instead
                log.warning("leases_release_failed", count=len(unstarted), error=repr(exc))
        actors = list(self.actors.values())
        deadline = time.monotonic() + self._grace_s
        waits = [asyncio.ensure_future(a.wait_in_flight()) for a in actors]
        if waits:
            _, pending = await asyncio.wait(waits, timeout=max(0.0, deadline - time.monotonic()))
            if pending:
                log.warning("attempts_cut_at_shutdown", actors=len(pending))
                for actor in actors:
                    actor.cancel_in_flight()
                await asyncio.wait(waits)
        for task in self._supervisors.values():
            task.cancel()
        await asyncio.gather(*self._supervisors.values(), return_exceptions=True)


def _loop_time() -> float:
    return asyncio.get_running_loop().time()
