"""The composition root: builds every part and runs the long-lived ones in one TaskGroup.

If the listener, the writer or a periodic task dies unexpectedly, the group cancels the rest and
run() raises: the process exits non-zero and the orchestrator restarts it (DESIGN §8).

Shutdown (the ``stop`` event, set by SIGTERM): the dispatcher stops claiming, releases what never
started and lets in-flight attempts finish; then the writer writes every outcome; then the rest
ends. Only if the database stays unreachable past the grace period are outcomes abandoned (logged
with their count; their deliveries are sent again after the lease expires: at-least-once).

The admin server (/healthz, /readyz, /metrics and the API of engine.admin.routes) is bound before
the parts start, so a taken port fails the start and ``admin_url`` is known once ``started`` is set;
it stops only after the drain, so probes and scrapes keep answering while in-flight attempts finish
(/readyz says ``stopping``).
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import structlog
from aiohttp import web

from engine.admin import account_routes as account_api
from engine.admin import portal
from engine.admin import routes as api
from engine.admin.server import AdminContext, AdminServer, create_app
from engine.config import Settings
from engine.db.migrate import check_current, migrate
from engine.db.pool import open_engine_pool
from engine.db.store import Store
from engine.delivery.actor import LEASE_MARGIN_S, ActorDeps
from engine.delivery.dispatcher import Dispatcher
from engine.delivery.housekeeping import (
    OutageLog,
    PolicyReload,
    count_queue_depths,
    maintain_partitions,
    periodic,
)
from engine.delivery.http import Sender
from engine.delivery.idle_vacuum import IdleVacuum
from engine.delivery.listener import Listener
from engine.delivery.writer import ResultWriter
from engine.errors import ConfigError
from engine.metrics import Metrics
from engine.models import AttemptOutcome, Outcome, Policy, Recorded

log = structlog.get_logger("engine.app")


def check_lease(policy: Policy) -> None:
    """Refuse to start on a lease that lets no attempt start (every claim skipped, forever).

    SQL refuses such a change when it is made (webhooks.check_lease); this catches a database left
    so before that check existed, or with its triggers disabled.
    """
    if policy.lease_duration_s <= policy.longest_timeout_s + LEASE_MARGIN_S:
        raise ConfigError(
            f"webhooks.settings.lease_duration ({policy.lease_duration_s:g} s) must exceed the"
            f" longest request timeout in force ({policy.longest_timeout_s:g} s) plus a margin of"
            f" {LEASE_MARGIN_S:g} s, or the engine would deliver nothing; raise lease_duration or"
            " lower the timeouts (settings.request_timeout_s, endpoints' timeout_s)",
            field="lease_duration",
        )


class Engine:
    """One engine process's parts; ``run(stop)`` until ``stop`` is set."""

    def __init__(self, settings: Settings, database_url: str) -> None:
        self.settings = settings
        self.database_url = database_url
        self.policy_reload: PolicyReload | None = None
        self.listener: Listener | None = None
        self.dispatcher: Dispatcher | None = None
        self.writer: ResultWriter | None = None
        self.vacuum: IdleVacuum | None = None
        self.store: Store | None = None
        self.started = asyncio.Event()
        self._settings_changed = asyncio.Event()
        self.admin_url: str | None = None  # the admin server's base URL, once started
        self.admin_app: web.Application | None = None  # what the admin server serves, once built
        self.metrics = Metrics(
            actors=lambda: len(self.dispatcher.actors) if self.dispatcher else 0,
            results_buffered=lambda: self.writer.buffered if self.writer else 0,
            listener_up=lambda: bool(self.listener and self.listener.connected),
            tasks=lambda: len(asyncio.all_tasks()),  # scraped from within the loop
        )

    async def run(self, stop: asyncio.Event) -> None:
        s = self.settings
        pool = await open_engine_pool(self.database_url, s.pool_size)
        try:
            async with pool.acquire() as conn:
                if s.migrate:
                    report = await migrate(conn)
                    if report.changed:
                        log.info("migrated", applied=report.applied, functions=report.functions)
                else:
                    await check_current(conn)
            self.store = store = Store(pool)
            policy = await store.policy()
            check_lease(policy)
            if s.request_timeout_s is not None:
                log.warning(
                    "config_deprecated",
                    field="WEBHOOKS_REQUEST_TIMEOUT_S",
                    detail="it only bounds attempts now; set webhooks.settings.request_timeout_s"
                    " or an endpoint's timeout_s instead",
                )
            sender = Sender(
                timeout_s=s.request_timeout_s,
                allow_http=policy.allow_http,
                allow_private_networks=policy.allow_private_networks,
                max_connections=s.max_connections,
                excerpt_bytes=s.excerpt_bytes,
            )
            await sender.start()
            try:
                self.policy_reload = PolicyReload(
                    store,
                    policy,
                    lambda new: sender.update_policy(
                        allow_http=new.allow_http, allow_private_networks=new.allow_private_networks
                    ),
                )
                await self._run_parts(store, sender, self.policy_reload, stop)
            finally:
                await sender.close()
        finally:
            await pool.close()

    @property
    def policy(self) -> Policy | None:
        """The settings row as the engine applies it now; None before run() read it."""
        return self.policy_reload.current if self.policy_reload else None

    async def _run_parts(
        self, store: Store, sender: Sender, policy: PolicyReload, stop: asyncio.Event
    ) -> None:
        s = self.settings
        self.writer = writer = ResultWriter(
            store, batch=s.result_batch, buffer_max=s.result_buffer_max, on_written=self._written
        )
        deps = ActorDeps(
            sender=sender,
            writer=writer,
            request_timeout_s=s.request_timeout_s,
            queue_per_in_flight=s.queue_per_in_flight,
            lease_s=policy.lease_s,
            on_room=self._wake,
            on_started=self.metrics.attempt_started,
            slots=asyncio.Semaphore(s.max_connections),
        )
        self.vacuum = vacuum = IdleVacuum(
            store, dead_rows=s.vacuum_dead_rows, check_s=s.vacuum_check_s
        )
        self.listener = listener = Listener(
            self.database_url,
            on_wakeup=self._wake,
            on_settings=self._settings_changed.set,
            on_connect=self._listener_connected,
            probe_s=s.listener_probe_s,
        )
        self.dispatcher = dispatcher = Dispatcher(
            store,
            deps,
            poll_interval_s=s.poll_interval_s,
            claim_batch=s.claim_batch,
            max_outstanding=s.max_connections * s.queue_per_in_flight,
            shutdown_grace_s=s.shutdown_grace_s,
            # With LISTEN off the listener never runs, so it is never connected and this engine
            # never asks the app for NOTIFYs.
            listening=lambda: listener.connected,
            on_idle=vacuum.engine_idle if s.vacuum_dead_rows else None,
        )
        context = AdminContext(
            store,
            self.metrics,
            (lambda: listener.connected) if s.listen else None,
            stop,
            s.admin_token,
            portal_key=s.portal_key,
            public_url=s.public_url,
            cors_origins=s.allowed_origins,
        )
        # Sized once from the policy at start: a body limit raised later applies after a restart.
        self.admin_app = create_app(
            context,
            api.routes,
            account_api.routes,
            portal.routes(s.portal_frame_ancestors),
            client_max_size=api.body_limit(policy.current.max_payload_bytes),
        )
        admin = AdminServer(self.admin_app, s.admin_host, s.admin_port)
        self.admin_url = await admin.start()
        try:
            async with asyncio.TaskGroup() as tg:
                writer_task = tg.create_task(writer.run(), name="result-writer")
                if s.listen:
                    tg.create_task(listener.run(stop), name="listener")
                tg.create_task(
                    periodic(
                        lambda: maintain_partitions(store, stop),
                        every_s=s.maintenance_interval_s,
                        stop=stop,
                        outage=OutageLog("maintenance_failed", "maintenance_recovered"),
                    ),
                    name="maintenance",
                )
                if s.vacuum_dead_rows:
                    tg.create_task(vacuum.run(stop), name="idle-vacuum")
                tg.create_task(
                    periodic(
                        policy.reload,
                        every_s=s.settings_refresh_s,
                        stop=stop,
                        outage=OutageLog("settings_reload_failed", "settings_reload_recovered"),
                        wake=self._settings_changed,
                    ),
                    name="policy",
                )
                tg.create_task(
                    periodic(
                        lambda: count_queue_depths(store, self.metrics),
                        every_s=s.metrics_refresh_s,
                        stop=stop,
                        outage=OutageLog("queue_depths_failed", "queue_depths_recovered"),
                    ),
                    name="queue-depths",
                )
                self.started.set()
                log.info("engine_started")
                await dispatcher.run(stop)
                writer.close()
                done, _ = await asyncio.wait([writer_task], timeout=s.shutdown_grace_s)
                if not done:
                    lost = writer.abandon()
                    log.error(
                        "results_abandoned", count=lost, reason="database unreachable at shutdown"
                    )
                    writer_task.cancel()
        finally:
            await admin.close()
        log.info("engine_stopped", attempts_written=writer.written)

    def _wake(self) -> None:
        if self.dispatcher is not None:
            self.dispatcher.wake()

    def _listener_connected(self) -> None:
        self.metrics.listener_connected()
        self._wake()

    def _written(self, outcomes: Sequence[Outcome], recorded: Sequence[Recorded]) -> None:
        self.metrics.results_written(outcomes, recorded)
        for outcome, result in zip(outcomes, recorded, strict=True):
            if result.outcome is not AttemptOutcome.DELIVERED:
                log.info(
                    "attempt_recorded",
                    delivery_id=result.delivery_id,
                    attempt=result.attempt,
                    outcome=result.outcome,
                    status=outcome.status,
                    error_kind=outcome.error_kind,
                    duration_ms=outcome.duration_ms,
                    next_attempt_at=result.next_attempt_at,
                )
        self._wake()
