"""W6, the app's cost of emitting: commits/s of MisarMail-like writers with and without webhooks.

``python -m bench.producer --url URL --accounts PREFIX`` is the load generator, in its own process
(like pgbench): C asyncpg connections on uvloop, each inserting one ~1 KiB row into
``app.email_events`` per transaction (autocommit) for S seconds, account ``PREFIX<n % 20>``. It
prints ``{"commits": N, "seconds": S}``.

The variants (:func:`w6_producer_cost`), each on an emptied hot table:

- a: no trigger on the table, no engine: the app alone.
- b: the example trigger, accounts without endpoints, no engine: the common path, which is the
  trigger's ``webhooks.subscribed`` guard (one probe) and no payload.
- b, no guard: as b with a trigger that calls ``webhooks.emit`` directly, so the payload is built
  and emit checks it and probes: what an app that skips the guard pays (reported, no target).
- b, empty trigger: an AFTER ROW trigger in PL/pgSQL that does nothing: what Postgres charges
  for firing any row trigger at all, the floor under b that no emit design can go below.
- c: the trigger, one endpoint per account (20), a fresh engine running and busy delivering
  what the producers emit. ``emit`` NOTIFYs only while the engine says it is waiting.
- n: as c, with a trigger that also calls ``pg_notify`` every time: the usual design.
- z: as c, with NOTIFY made impossible: a bench trigger on ``webhooks.engine_state`` keeps
  the waiting mark cleared whatever the engine writes. Same engine load as c, so c/z is what the
  wake-up scheme itself costs the app.
- z, no engine: as z without the engine, to show how much of the machine the busy engine and
  its receiver take from the app on this 2-core machine (not a target).
- c, engine stopped: as c with no engine running and ``webhooks.engine_state`` as an engine that
  died asleep leaves it (a deploy, a crash): what the app pays while the webhook side is down.
  Against c (target), and against z, no engine, which has the same machine load and no NOTIFY.
- lean outbox: the trigger of bench.outbox, accounts with one endpoint each, no engine: what a
  hand-written outbox in the same trigger shape costs the app; c and "c, engine stopped" against it.
- lean outbox, relay busy: as lean outbox, with bench.lean_relay delivering its rows to the same
  receiver while the app writes: the least HTTP work a hand-written outbox takes from the same two
  cores, so that c (whose engine and receiver share them) has a baseline under the same kind of
  load.
- c, open transaction: c while another connection holds a REPEATABLE READ transaction (and so
  its snapshot) open for the whole run, so no dead row of the hot table can be removed.

a, b, "b, no guard" and "b, empty trigger" take turns in 5 rounds of a fifth of the time each, and
each reports its median round, so that the machine's drift falls on all of them alike; so do c, n,
z, "c, engine stopped", "z, no engine" and both lean outbox variants.

Every W6 engine polls every 10 ms when idle, instead of every second: z's engine gets no
wake-up, and with the default poll it napped and then delivered in cheaper batches, which left the
app CPU that c's promptly woken engine used (bench/README.md). The same poll for c, n and z makes
c/z measure the wake-up scheme, not the nap.

A LISTEN connection of the bench counts the wake-ups the app sent in each variant. Claim latency
is the mean duration of the engine's ``webhooks.claim_v2`` calls during the variant as the server
timed them (``pg_stat_user_functions``): timing claims from a connection of our own would take
work from the engine or, with no room, skip the per-endpoint scans that dead entries slow down.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import json
import sys
import time
from collections.abc import AsyncIterator, Sequence

import asyncpg
import uvloop

from bench.harness import REPO_ROOT, BenchError, Child
from bench.outbox import CLEAR_LEAN, LEAN_OUTBOX, LEAN_TRIGGER
from bench.payloads import app_row
from bench.producer_report import ROUNDS, Variant, report
from bench.suite import DB_TIMEOUT_S, ENDPOINTS, INSERT_ROW, Suite, function_delta, progress

ACCOUNTS_PREFIX = "w6_"
NO_ENDPOINT_PREFIX = "w6_none_"
PRODUCER_TIMEOUT_S = 120.0
# W6's engines poll every 10 ms when idle (the default is 1 s); see the module docstring.
ENGINE_POLL_S = "0.01"

DROP_TRIGGER = "DROP TRIGGER IF EXISTS email_event_webhook ON app.email_events"
CREATE_TRIGGER = """
CREATE TRIGGER email_event_webhook AFTER INSERT ON app.email_events
    FOR EACH ROW EXECUTE FUNCTION app.{function}()"""
# The example trigger's emit call, used three ways below. Copied rather than read from the example
# so that the measured variants stay what they are when the example changes.
_EMIT_CALL = """
        PERFORM webhooks.emit(
            NEW.account_id,
            'email.' || NEW.kind,
            jsonb_build_object('email_event_id', NEW.id, 'recipient', NEW.recipient,
                               'campaign_id', NEW.campaign_id, 'occurred_at', NEW.occurred_at)
                || NEW.details);"""
BENCH_TRIGGERS = f"""
-- The example trigger plus a NOTIFY in every transaction: what most Postgres queues do.
CREATE OR REPLACE FUNCTION app.email_event_webhook_notify() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF webhooks.subscribed(NEW.account_id, 'email.' || NEW.kind) THEN{_EMIT_CALL}
    END IF;
    PERFORM pg_notify('webhooks_wakeup', '');
    RETURN NULL;
END $$;
-- A row trigger that does nothing: Postgres's own cost of firing one, whatever it does.
CREATE OR REPLACE FUNCTION app.email_event_webhook_empty() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RETURN NULL;
END $$;
-- The example trigger without its webhooks.subscribed guard: emit alone, payload always built.
CREATE OR REPLACE FUNCTION app.email_event_webhook_unguarded() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN{_EMIT_CALL}
    RETURN NULL;
END $$"""
HOLD_BUSY = """
CREATE OR REPLACE FUNCTION webhooks.bench_hold_busy() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    NEW.waiting_until := NULL;
    RETURN NEW;
END $$;
CREATE TRIGGER bench_hold_busy BEFORE UPDATE ON webhooks.engine_state
    FOR EACH ROW EXECUTE FUNCTION webhooks.bench_hold_busy();
UPDATE webhooks.engine_state SET waiting_until = NULL"""
RELEASE_BUSY = "DROP TRIGGER bench_hold_busy ON webhooks.engine_state"
# The mark an engine that died asleep leaves behind, once its expiry has passed.
DEAD_MARK = "UPDATE webhooks.engine_state SET waiting_until = now() - interval '1 second'"
CLAIM_STATS = """
SELECT coalesce(sum(calls), 0)::bigint AS calls, coalesce(sum(total_time), 0)::float8 AS ms
  FROM pg_stat_user_functions WHERE schemaname = 'webhooks' AND funcname = 'claim_v2'"""
HOT_TABLE = """
SELECT pg_relation_size('webhooks.deliveries') AS heap,
       pg_indexes_size('webhooks.deliveries') AS indexes,
       (SELECT n_dead_tup FROM pg_stat_user_tables
         WHERE schemaname = 'webhooks' AND relname = 'deliveries') AS dead,
       (SELECT count(*) FROM webhooks.deliveries) AS live"""


async def w6_producer_cost(suite: Suite, seconds: float, connections: int) -> None:
    conn = suite.conn
    await suite.create_endpoints(
        [f"{ACCOUNTS_PREFIX}{i}" for i in range(ENDPOINTS)], f"/{ACCOUNTS_PREFIX}"
    )
    await conn.execute(BENCH_TRIGGERS)
    await conn.execute(LEAN_OUTBOX)
    runner = _Runner(suite, seconds, connections)
    try:
        async with runner.counting_notifies():
            no_engine = {"engine": False}
            a, b, b_bare, b_empty = await runner.interleaved(
                [
                    ("a", None, ACCOUNTS_PREFIX, no_engine),
                    ("b", "email_event_webhook", NO_ENDPOINT_PREFIX, no_engine),
                    ("b, no guard", "email_event_webhook_unguarded", NO_ENDPOINT_PREFIX, no_engine),
                    (
                        "b, empty trigger",
                        "email_event_webhook_empty",
                        NO_ENDPOINT_PREFIX,
                        no_engine,
                    ),
                ]
            )
            c, n, z, c_stopped, z0, lean, lean_busy = await runner.interleaved(
                [
                    ("c", "email_event_webhook", ACCOUNTS_PREFIX, {}),
                    ("n", "email_event_webhook_notify", ACCOUNTS_PREFIX, {}),
                    ("z", "email_event_webhook", ACCOUNTS_PREFIX, {"hold_busy": True}),
                    (
                        "c, engine stopped",
                        "email_event_webhook",
                        ACCOUNTS_PREFIX,
                        {"engine": False, "dead_mark": True},
                    ),
                    (
                        "z, no engine",
                        "email_event_webhook",
                        ACCOUNTS_PREFIX,
                        {"engine": False, "hold_busy": True},
                    ),
                    ("lean outbox", LEAN_TRIGGER, ACCOUNTS_PREFIX, no_engine),
                    (
                        "lean outbox, relay busy",
                        LEAN_TRIGGER,
                        ACCOUNTS_PREFIX,
                        {"engine": False, "relay": True},
                    ),
                ]
            )
            # c once more for the whole time: the baseline of the open-transaction run, whose hot
            # table and claims depend on how long the backlog grew.
            c_full = await runner.variant("c, whole time", "email_event_webhook", ACCOUNTS_PREFIX)
            c_open = await runner.variant(
                "c, open transaction", "email_event_webhook", ACCOUNTS_PREFIX, hold_snapshot=True
            )
    finally:
        await conn.execute(DROP_TRIGGER)
        await conn.execute(CREATE_TRIGGER.format(function="email_event_webhook"))
    report(
        suite, connections,
        a=a, b=b, b_bare=b_bare, b_empty=b_empty, c=c, n=n, z=z, z0=z0, c_stopped=c_stopped,
        c_full=c_full, c_open=c_open, lean=lean, lean_busy=lean_busy,
    )  # fmt: skip


class _Runner:
    """Runs one variant at a time; counts NOTIFYs on the wake-up channel all along."""

    def __init__(self, suite: Suite, seconds: float, connections: int) -> None:
        self.suite = suite
        self.seconds = seconds
        self.connections = connections
        self.notifies = 0

    @contextlib.asynccontextmanager
    async def counting_notifies(self) -> AsyncIterator[None]:
        listener = await asyncpg.connect(self.suite.url, timeout=DB_TIMEOUT_S)

        def count(*_: object) -> None:
            self.notifies += 1

        try:
            await listener.add_listener("webhooks_wakeup", count)
            yield
        finally:
            await listener.close()

    async def interleaved(
        self, variants: Sequence[tuple[str, str | None, str, dict[str, bool]]]
    ) -> list[Variant]:
        """Variants (name, trigger, accounts, options of :meth:`variant`) in ROUNDS short rounds,
        taking turns; each gets its median round.

        Run one after the other for 20 s each, the same variant's rate drifted by a fifth between
        runs on this shared machine, which is the size of the effects b/a and c/z measure.
        """
        rounds: list[list[Variant]] = [[] for _ in variants]
        for _ in range(ROUNDS):
            for samples, (name, trigger, accounts, options) in zip(rounds, variants, strict=True):
                samples.append(
                    await self.variant(
                        name, trigger, accounts, seconds=self.seconds / ROUNDS, **options
                    )
                )
        return [_median_round(samples) for samples in rounds]

    async def variant(
        self,
        name: str,
        trigger: str | None,
        accounts: str,
        *,
        engine: bool = True,
        hold_busy: bool = False,
        dead_mark: bool = False,
        hold_snapshot: bool = False,
        relay: bool = False,
        seconds: float | None = None,
    ) -> Variant:
        suite, conn = self.suite, self.suite.conn
        seconds = self.seconds if seconds is None else seconds
        progress(f"W6 {name}: {self.connections} connections for {seconds:g} s")
        await suite.clear()
        await conn.execute(CLEAR_LEAN)
        await conn.execute(DROP_TRIGGER)
        if trigger is not None:
            await conn.execute(CREATE_TRIGGER.format(function=trigger))
        await conn.execute("VACUUM ANALYZE webhooks.deliveries")
        functions0 = await suite.function_times()
        async with contextlib.AsyncExitStack() as stack:
            if engine:
                await stack.enter_async_context(suite.engine(poll_interval_s=ENGINE_POLL_S))
            if hold_busy:  # after the engine's readiness check, which waits for waiting = true
                await conn.execute(HOLD_BUSY)
                stack.push_async_callback(conn.execute, RELEASE_BUSY)
            if dead_mark:
                await conn.execute(DEAD_MARK)
            if hold_snapshot:
                await stack.enter_async_context(_open_snapshot(suite.url))
            if relay:
                await stack.enter_async_context(_lean_relay(suite))
            claims0 = await _row(conn, CLAIM_STATS)
            await suite.receiver.reset()
            await asyncio.sleep(0.2)  # NOTIFYs of the probe and readiness checks arrive first
            self.notifies = 0
            commits, seconds = await produce(suite.url, accounts, self.connections, seconds)
            await asyncio.sleep(0.2)  # the last commits' NOTIFYs
            notifies = self.notifies
            hot = await _row(conn, HOT_TABLE)
            delivered = (await suite.receiver.stats()).unique
        # The engine has exited, so its backends flushed their function statistics.
        await asyncio.sleep(0.5)
        claims1 = await _row(conn, CLAIM_STATS)
        functions1 = await suite.function_times()

        def us_per_commit(name: str) -> float:
            return function_delta(functions0, functions1, name)[1] * 1000 / commits

        calls = claims1["calls"] - claims0["calls"]
        claim_ms = (claims1["ms"] - claims0["ms"]) / calls if calls else None
        rate = commits / seconds
        progress(f"W6 {name}: {rate:,.0f} commits/s, {notifies:,} NOTIFYs, {delivered:,} delivered")
        return Variant(
            commits_per_s=rate,
            notifies=notifies,
            commits=commits,
            delivered=delivered,
            hot_table_mb=(hot["heap"] + hot["indexes"]) / 2**20,
            dead_rows=hot["dead"] or 0,
            live_rows=hot["live"],
            claim_ms=claim_ms if engine else None,
            trigger_us=us_per_commit(f"app.{trigger}") if trigger else 0.0,
            emit_us=us_per_commit("webhooks.emit"),
        )


def _median_round(samples: Sequence[Variant]) -> Variant:
    """The median round by commit rate; commits, NOTIFYs and deliveries summed over all rounds."""
    median = sorted(samples, key=lambda v: v.commits_per_s)[len(samples) // 2]
    return dataclasses.replace(
        median,
        commits=sum(v.commits for v in samples),
        notifies=sum(v.notifies for v in samples),
        delivered=sum(v.delivered for v in samples),
        round_rates=tuple(v.commits_per_s for v in samples),
    )


async def _row(conn: asyncpg.Connection, query: str) -> asyncpg.Record:
    row = await conn.fetchrow(query)
    assert row is not None  # aggregates: always one row
    return row


@contextlib.asynccontextmanager
async def _open_snapshot(url: str) -> AsyncIterator[None]:
    """A transaction that holds its snapshot (and so the xmin horizon) until exit."""
    conn = await asyncpg.connect(url, timeout=DB_TIMEOUT_S)
    try:
        await conn.execute("BEGIN ISOLATION LEVEL REPEATABLE READ")
        await conn.fetchval("SELECT count(*) FROM webhooks.deliveries")
        yield
        await conn.execute("ROLLBACK")
    finally:
        await conn.close()


@contextlib.asynccontextmanager
async def _lean_relay(suite: Suite) -> AsyncIterator[None]:
    """``python -m bench.lean_relay`` on the suite's database until exit, stopped with SIGTERM."""
    log_path = suite.workdir / "lean_relay.log"
    with log_path.open("wb") as log:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "bench.lean_relay", "--url", suite.url,
            cwd=REPO_ROOT, stdin=asyncio.subprocess.DEVNULL, stdout=log, stderr=log,
        )  # fmt: skip
    relay = Child("lean relay", proc, log_path)
    try:
        yield
        relay.check_alive()
    finally:
        code = await relay.terminate()
        if code != 0:
            raise BenchError(f"the lean relay exited {code}; log tail:\n{relay.log_tail()}")


async def produce(url: str, accounts: str, connections: int, seconds: float) -> tuple[int, float]:
    """Run ``python -m bench.producer`` and return (commits, seconds) it printed."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "bench.producer",
        "--url",
        url,
        "--accounts",
        accounts,
        "--connections",
        str(connections),
        "--seconds",
        str(seconds),
        cwd=REPO_ROOT,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        out, err = await asyncio.wait_for(proc.communicate(), seconds + PRODUCER_TIMEOUT_S)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    if proc.returncode != 0:
        raise BenchError(f"the producer failed ({proc.returncode}): {err.decode()[-3000:]}")
    data = json.loads(out)
    return int(data["commits"]), float(data["seconds"])


# -- the load generator process ----------------------------------------------------------------


async def _writer(
    conn: asyncpg.Connection, rows: Sequence[tuple[str, str, str, str]], deadline: float
) -> int:
    statement = await conn.prepare(INSERT_ROW)
    done = 0
    while time.perf_counter() < deadline:
        await statement.fetch(*rows[done % len(rows)])
        done += 1
    return done


async def generate(url: str, accounts: str, connections: int, seconds: float) -> dict[str, float]:
    """Open every connection first, then write from all of them for ``seconds``."""
    rows = [app_row(i, f"{accounts}{i % ENDPOINTS}") for i in range(ENDPOINTS * 5)]
    conns = [await asyncpg.connect(url, timeout=DB_TIMEOUT_S) for _ in range(connections)]
    try:
        started = time.perf_counter()
        deadline = started + seconds
        counts = await asyncio.gather(*(_writer(c, rows, deadline) for c in conns))
        elapsed = time.perf_counter() - started
    finally:
        for c in conns:
            await c.close()
    return {"commits": sum(counts), "seconds": elapsed}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.producer", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--url", required=True, help="the benchmark database")
    parser.add_argument("--accounts", required=True, help="account id prefix (+ 0..19)")
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--seconds", type=float, default=20.0)
    args = parser.parse_args(argv)
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        result = runner.run(generate(args.url, args.accounts, args.connections, args.seconds))
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
