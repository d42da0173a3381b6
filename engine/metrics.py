"""The engine's Prometheus metrics, in one ``CollectorRegistry`` per Engine.

Never the process-global default registry: a test process runs several engines, and an embedding
process may have metrics of its own. Labels carry only small closed sets (outcome, status class,
queue state): no endpoint ids, URLs or anything secret, so cardinality is fixed whatever the
number of endpoints.

Three kinds of source:

- counters and histograms of attempts, fed from what the result writer recorded (so they agree
  with ``webhooks.attempts``), and from the actor when an attempt starts (first-attempt latency);
- gauges read from the engine's memory at scrape time (actors, buffered results, listener);
- gauges of database state (queue depths, NOTIFY queue usage) set by the app's periodic refresh,
  so a scrape never waits for Postgres and several scrapers do not multiply its load.
"""

from __future__ import annotations

import collections
from collections.abc import Callable, Sequence
from datetime import datetime

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)

from engine.models import AttemptOutcome, Delivery, Outcome, QueueDepths, Recorded

PREFIX = "misar_webhooks_"
STATUS_CLASSES = ("2xx", "3xx", "4xx", "5xx", "transport_error", "other")
# Attempts are bounded by their request timeout (an endpoint's timeout_s, within TIMEOUT_S_BOUNDS).
ATTEMPT_BUCKETS_S = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
# From the app's commit to the first attempt: milliseconds when idle, minutes under a backlog.
LATENCY_BUCKETS_S = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 15.0, 60.0, 300.0, 1800.0)


def status_class(status: int) -> str:
    """The ``status_class`` label of an attempt: ``transport_error`` when no response came."""
    if status == 0:
        return "transport_error"
    if 200 <= status <= 599:
        return f"{status // 100}xx"
    return "other"


class Metrics:
    """The registry and the instruments the engine updates; ``render()`` is the /metrics body.

    ``actors``, ``results_buffered``, ``listener_up`` and ``tasks`` are read at scrape time.
    """

    def __init__(
        self,
        *,
        actors: Callable[[], int],
        results_buffered: Callable[[], int],
        listener_up: Callable[[], bool],
        tasks: Callable[[], int],
    ) -> None:
        self.registry = registry = CollectorRegistry()
        self.delivery_outcomes = Counter(
            PREFIX + "delivery_outcomes",
            "Attempt results as recorded, by what became of the delivery: delivered and failed "
            "end it, retry schedules another attempt, stale means the lease had been lost and "
            "the result was discarded.",
            ["outcome"],
            registry=registry,
        )
        self.attempts = Counter(
            PREFIX + "attempts",
            "Recorded HTTP attempts by response status class; transport_error: no response "
            "(DNS, connect, TLS, timeout, blocked address, shutdown).",
            ["status_class"],
            registry=registry,
        )
        self.attempt_duration = Histogram(
            PREFIX + "attempt_duration_seconds",
            "Duration of recorded attempts, from the request's start to its outcome.",
            buckets=ATTEMPT_BUCKETS_S,
            registry=registry,
        )
        self.first_attempt_latency = Histogram(
            PREFIX + "first_attempt_latency_seconds",
            "From the delivery row's creation (the app's transaction) to the start of its "
            "first attempt.",
            buckets=LATENCY_BUCKETS_S,
            registry=registry,
        )
        self.queue_depth = Gauge(
            PREFIX + "queue_depth",
            "Live deliveries by state: due (claimable now), in_flight (leased), retry_waiting;"
            " accepted: events waiting in the intake, not yet fanned out into deliveries.",
            ["state"],
            registry=registry,
        )
        self.queue_depth_updated = Gauge(
            PREFIX + "queue_depth_updated_timestamp_seconds",
            "When queue_depth and pg_notification_queue_usage_ratio were last counted.",
            registry=registry,
        )
        self.notification_queue_usage = Gauge(
            PREFIX + "pg_notification_queue_usage_ratio",
            "Share of Postgres's NOTIFY queue in use (pg_notification_queue_usage()).",
            registry=registry,
        )
        self.listener_reconnects = Counter(
            PREFIX + "listener_reconnects",
            "Times the LISTEN connection was established again after being lost.",
            registry=registry,
        )
        Gauge(
            PREFIX + "listener_connected",
            "1 while the LISTEN connection is up (0 also when listening is turned off).",
            registry=registry,
        ).set_function(lambda: float(listener_up()))
        Gauge(
            PREFIX + "actors",
            "Endpoint actors alive (endpoints with work queued or in flight, or a rate-limit "
            "spacing still to wait out).",
            registry=registry,
        ).set_function(lambda: float(actors()))
        Gauge(
            PREFIX + "tasks",
            "asyncio tasks alive in the engine's event loop (actors, attempts in flight, the "
            "long-lived parts); an idle engine's count does not grow with its endpoints.",
            registry=registry,
        ).set_function(lambda: float(tasks()))
        Gauge(
            PREFIX + "results_buffered",
            "Attempt outcomes waiting to be written to Postgres.",
            registry=registry,
        ).set_function(lambda: float(results_buffered()))
        # Every series exists from the start, so a rate() sees the first increment.
        for outcome in AttemptOutcome:
            self.delivery_outcomes.labels(outcome)
        for cls in STATUS_CLASSES:
            self.attempts.labels(cls)
        self._listener_connects = 0

    def attempt_started(self, delivery: Delivery, started_at: datetime) -> None:
        """An actor started an attempt; the first of a delivery gives its commit latency."""
        if delivery.attempt == 1:
            latency = (started_at - delivery.created_at).total_seconds()
            # Clamp: the two clocks (this host's, the database's) may differ a little.
            self.first_attempt_latency.observe(max(0.0, latency))

    def results_written(self, outcomes: Sequence[Outcome], recorded: Sequence[Recorded]) -> None:
        """The writer recorded these outcomes (the writer's ``on_written``)."""
        # Counted per batch: a labelled child's lookup and lock cost more than the increment.
        for name, count in collections.Counter(r.outcome for r in recorded).items():
            self.delivery_outcomes.labels(name).inc(count)
        for cls, count in collections.Counter(status_class(o.status) for o in outcomes).items():
            self.attempts.labels(cls).inc(count)
        observe = self.attempt_duration.observe
        for outcome in outcomes:
            observe(outcome.duration_ms / 1000)

    def listener_connected(self) -> None:
        """The listener (re)connected: every connection after the first is a reconnect."""
        if self._listener_connects:
            self.listener_reconnects.inc()
        self._listener_connects += 1

    def set_queue_depths(self, depths: QueueDepths) -> None:
        self.queue_depth.labels("due").set(depths.due)
        self.queue_depth.labels("in_flight").set(depths.in_flight)
        self.queue_depth.labels("retry_waiting").set(depths.retry_waiting)
        self.queue_depth.labels("accepted").set(depths.accepted)
        self.notification_queue_usage.set(depths.notification_queue_usage)
        self.queue_depth_updated.set_to_current_time()

    def render(self) -> tuple[bytes, str]:
        """The exposition body and its content type."""
        return generate_latest(self.registry), CONTENT_TYPE_LATEST
