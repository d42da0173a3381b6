"""What every workload of the suite shares: the database, the app's table, the receiver, engines.

The app is MisarMail as ``sql/examples/misarmail_app.sql`` shows it: rows inserted into
``app.email_events`` fire a trigger that calls ``webhooks.emit`` in the same transaction. Every
workload emits that way (``INSERT`` of rows whose trigger emits ~1 KiB ``email.sent`` events),
except W5, whose backlog is written directly with set-based SQL (see :mod:`bench.memory`).

Each workload starts its own engine (``misar-webhooks run`` in its own process) on the one
database, and leaves the hot table empty for the next.
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
import time
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import asyncpg

from bench.harness import (
    REPO_ROOT,
    BenchError,
    EngineProcess,
    ReceiverProcess,
    ReceiverStats,
    wait_until,
)
from bench.payloads import EVENT_TYPE, app_row, payload_text
from bench.report import Row

if TYPE_CHECKING:
    from bench.delivery import W1Round  # delivery imports this module

ENDPOINTS = 20
BATCH = 500  # events per app transaction in bursts
STALL_S = 60.0  # no new delivery for this long fails the run
ENGINE_READY_S = 60.0
POLL_S = 0.05
DB_TIMEOUT_S = 120.0
PROBE_ACCOUNT = "acct_probe"
PROBE_PATH = "/probe"
APP_SQL = REPO_ROOT / "sql" / "examples" / "misarmail_app.sql"

INSERT_ROW = (
    "INSERT INTO app.email_events (account_id, kind, recipient, campaign_id, details) "
    "VALUES ($1, 'sent', $2, $3, $4::jsonb)"
)
EMIT = "SELECT webhooks.emit($1::text, $2::text, $3::jsonb)"
CREATE_ENDPOINT = "SELECT id FROM webhooks.create_endpoint($1::text, $2::text, $3::text[])"
# The receiver is on loopback over http; the engine refuses both by default (SSRF guard).
OPEN_POLICY = "UPDATE webhooks.settings SET allow_http = true, allow_private_networks = true"
# Per-function call counts and times in pg_stat_user_functions (for every connection made from now
# on, and ours): the claim's own duration, measured in the server without taking work from the
# engine (see bench.producer), and where Postgres's time goes (W1).
TRACK_FUNCTIONS = """
DO $$ BEGIN
    EXECUTE format('ALTER DATABASE %I SET track_functions = ''all''', current_database());
END $$;
SET track_functions = 'all'"""
# Whether an engine is asleep and asks for NOTIFYs (its waiting mark stands), and clearing the mark
# as a busy engine's claim does.
ENGINE_WAITING = "SELECT coalesce(waiting_until > now(), false) FROM webhooks.engine_state"
ENGINE_BUSY = "UPDATE webhooks.engine_state SET waiting_until = NULL"
# Live deliveries, and accepted events not fanned out yet (each becomes one or more of them).
LIVE_DELIVERIES = (
    "SELECT (SELECT count(*) FROM webhooks.deliveries) + (SELECT count(*) FROM webhooks.intake)"
)
FUNCTION_TIMES = """
SELECT schemaname || '.' || funcname AS name, sum(calls)::bigint AS calls,
       sum(self_time)::float8 AS self_ms
  FROM pg_stat_user_functions GROUP BY 1"""
# Between workloads that leave work behind (a backlog, a run cut short): every table of events
# and deliveries, and the app's rows. Endpoints stay.
CLEAR = """
TRUNCATE webhooks.deliveries, webhooks.events, webhooks.attempts, webhooks.delivery_outcomes,
         webhooks.idempotency_keys, webhooks.intake, app.email_events"""


FunctionTimes = dict[str, tuple[int, float]]


def function_delta(before: FunctionTimes, after: FunctionTimes, name: str) -> tuple[int, float]:
    """Calls and self time (ms) of SQL function ``name`` between two :meth:`Suite.function_times`
    readings; a function never called counts zero."""
    calls0, ms0 = before.get(name, (0, 0.0))
    calls1, ms1 = after.get(name, (0, 0.0))
    return calls1 - calls0, ms1 - ms0


def progress(message: str) -> None:
    """Progress goes to stderr, so stdout holds only the table."""
    print(f"bench: {message}", file=sys.stderr, flush=True)


@dataclass
class Suite:
    """One run's shared state; workloads append their rows and leave figures others divide by."""

    url: str
    kind: str  # "server" or "embedded"
    conn: asyncpg.Connection
    receiver: ReceiverProcess
    workdir: Path
    rows: list[Row] = field(default_factory=list)
    http_limit: float = 0.0
    lone_request_ms: tuple[float, float] = (0.0, 0.0)  # p50, p99 at concurrency 1
    http_limit_concurrency: int = 16  # the baselines' best, which W1's rounds measure again
    baseline_requests: int = 0  # requests per HTTP limit measurement
    w1_seconds: float | None = None  # W1's first commit to last receipt (median round), for W4
    w1_rounds: list[W1Round] = field(default_factory=list)  # and W3's bursts beside them
    rest_rss_mb: float | None = None  # the first engine's, ready and idle
    rest_tasks: float | None = None
    engine_exits: list[int] = field(default_factory=list)
    _row_ids: int = 0

    def add(self, *rows: Row) -> None:
        self.rows.extend(rows)

    async def prepare(self) -> None:
        """The app's table and trigger, the policy, and the 20 endpoints every burst uses."""
        await self.conn.execute(TRACK_FUNCTIONS)
        await self.conn.execute(OPEN_POLICY)
        await self.conn.execute(APP_SQL.read_text())
        await self.create_endpoints([f"acct_{i}" for i in range(ENDPOINTS)], "/ep_")
        await self.conn.fetchval(
            CREATE_ENDPOINT, PROBE_ACCOUNT, self.receiver.url(PROBE_PATH), ["*"]
        )

    async def create_endpoints(self, accounts: Sequence[str], path_prefix: str) -> None:
        """One endpoint per account, subscribed to everything, at ``<prefix><i>``."""
        args = [
            (account, self.receiver.url(f"{path_prefix}{i}"), ["*"])
            for i, account in enumerate(accounts)
        ]
        await self.conn.executemany(CREATE_ENDPOINT, args, timeout=DB_TIMEOUT_S)

    def rows_for(self, accounts: Sequence[str], count: int) -> list[tuple[str, str, str, str]]:
        """``count`` app rows, row i for ``accounts[i % len(accounts)]``."""
        first = self._row_ids
        self._row_ids += count
        return [app_row(first + i, accounts[i % len(accounts)]) for i in range(count)]

    async def function_times(self) -> FunctionTimes:
        """Calls and self time (ms) of every SQL function so far, as the server counted them.

        An engine's backends report theirs when they exit; ours is flushed here first.
        """
        await self.conn.execute("SELECT pg_stat_force_next_flush()")
        await self.conn.execute("SELECT 1")
        rows = await self.conn.fetch(FUNCTION_TIMES)
        return {r["name"]: (r["calls"], r["self_ms"]) for r in rows}

    async def clear(self) -> None:
        await self.conn.execute(CLEAR, timeout=DB_TIMEOUT_S)

    @contextlib.asynccontextmanager
    async def engine(self, *, ready: bool = True, **settings: str) -> AsyncIterator[EngineProcess]:
        """A fresh engine; with ``ready``, one that ran a claim cycle, delivered a probe event
        and went idle (so the next commit wakes it by NOTIFY). Stopped with SIGTERM on exit; its
        exit code is kept (the table shows whether every engine exited 0)."""
        await self.conn.execute(ENGINE_BUSY)  # seeing it true again means a claim cycle ran
        async with EngineProcess.running(self.url, self.workdir, **settings) as engine:
            if ready:
                await self._wait_ready(engine)
                if self.rest_rss_mb is None:
                    self.rest_rss_mb = engine.memory_mb()[0]
                    self.rest_tasks = (await engine.metrics())["misar_webhooks_tasks"]
            try:
                yield engine
            finally:
                code = await engine.terminate()
                self.engine_exits.append(code)
                if code != 0:
                    progress(f"engine exited {code} on SIGTERM; log tail:\n{engine.log_tail()}")

    async def _wait_ready(self, engine: EngineProcess) -> None:
        async def waiting() -> bool:
            return bool(await self.conn.fetchval(ENGINE_WAITING))

        async def probed() -> bool:
            return (await self.receiver.stats()).per_path.get(PROBE_PATH, 0) > 0

        await self.receiver.reset()
        await wait_until(
            waiting, timeout_s=ENGINE_READY_S, what="the engine's first claim cycle", alive=engine
        )
        await self.conn.execute(EMIT, PROBE_ACCOUNT, EVENT_TYPE, payload_text(0))
        await wait_until(
            probed, timeout_s=ENGINE_READY_S, what="the probe event's delivery", alive=engine
        )
        await wait_until(
            waiting, timeout_s=ENGINE_READY_S, what="the engine to go idle", alive=engine
        )
        await self.receiver.reset()

    async def wait_idle(self, engine: EngineProcess) -> None:
        """Until the hot table is empty (every result recorded) and the engine sleeps."""

        async def idle() -> bool:
            return await self.conn.fetchval(LIVE_DELIVERIES) == 0 and bool(
                await self.conn.fetchval(ENGINE_WAITING)
            )

        await wait_until(idle, timeout_s=STALL_S, what="the engine to go idle", alive=engine)


@dataclass(frozen=True)
class Burst:
    """One burst: ``commits`` holds time.time() as each COMMIT was sent, then when the last
    was done; ``stats`` is the receiver's when ``done`` held."""

    commits: list[float]
    stats: ReceiverStats

    @property
    def first_commit(self) -> float:
        return self.commits[0]

    @property
    def emit_seconds(self) -> float:
        return self.commits[-1] - self.commits[0]


async def burst(
    suite: Suite,
    engine: EngineProcess,
    rows: Sequence[tuple[str, str, str, str]],
    done: Callable[[ReceiverStats], bool],
) -> Burst:
    """Insert ``rows`` in transactions of BATCH and poll the receiver until ``done``."""
    conn = suite.conn
    commits: list[float] = []

    async def emit() -> None:
        for start in range(0, len(rows), BATCH):
            tx = conn.transaction()
            await tx.start()
            try:
                await conn.executemany(INSERT_ROW, rows[start : start + BATCH])
            except BaseException:
                await tx.rollback()
                raise
            commits.append(time.time())
            await tx.commit()
        commits.append(time.time())

    emitter = asyncio.get_running_loop().create_task(emit(), name="emit")
    try:
        stats = await wait_delivered(suite.receiver, engine, done, emitter)
        await emitter
    finally:
        if not emitter.done():
            emitter.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await emitter
    return Burst(commits, stats)


async def wait_delivered(
    receiver: ReceiverProcess,
    engine: EngineProcess,
    done: Callable[[ReceiverStats], bool],
    producer: asyncio.Task[None] | None = None,
) -> ReceiverStats:
    """Poll the receiver until ``done``; BenchError when nothing new arrives for STALL_S."""
    seen, progressed = -1, time.monotonic()
    while True:
        stats = await receiver.stats()
        if done(stats):
            return stats
        if producer is not None and producer.done() and producer.exception() is not None:
            await producer  # raises the producer's error
        engine.check_alive()
        now = time.monotonic()
        if stats.count + stats.failed != seen:
            seen, progressed = stats.count + stats.failed, now
        elif now - progressed > STALL_S:
            raise BenchError(
                f"deliveries stalled at {stats.unique:,} for {STALL_S:.0f} s; "
                f"engine log tail:\n{engine.log_tail()}"
            )
        await asyncio.sleep(POLL_S)
