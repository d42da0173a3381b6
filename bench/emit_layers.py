"""Where the app's cost of emitting with subscribers goes, layer by layer (issue 15, part 2).

``python -m bench.emit_layers [--rounds R] [--seconds S] [--connections C] [--url URL]`` starts a
durable embedded Postgres (or uses the empty database at URL), migrates it, installs the example
app, the lean outbox (bench.outbox) and the triggers below, and gives 20 accounts one endpoint
each. Then W6's load generator (``python -m bench.producer``: C connections, one ~1 KiB row per
transaction, no engine) runs each trigger in turn for S seconds, R rounds, and each trigger reports
the median over rounds of its commit rate divided by the lean outbox's in the same round.

Each trigger adds one layer to the one before it, from the lean outbox to the shipped example:

- lean outbox: ``EXISTS`` probe, one insert into a one-index events table, one row per endpoint
  into a two-index deliveries table;
- the same inserts into ``webhooks.events`` (partitioned) and ``webhooks.deliveries`` (its
  indexes): what the engine's tables cost, before any function;
- the example's guard (``webhooks.subscribed``) in place of the ``EXISTS``;
- the inserts moved into a PL/pgSQL function with no checks and no probe: the call;
- ``webhooks.emit`` as shipped: its checks, the settings and waiting-mark reads and its probe,
  then one row into ``webhooks.intake`` instead of the event and its deliveries: the example
  trigger (W6 "c, engine stopped"; docs/decisions/0012-emit-cost-by-layer.md).

And what the intake moves to the engine's side: the server CPU per event of fanning out what the
example's last round accepted with ``webhooks.fan_out_v1``, 200 rows per call (as a claim does).
Nothing here runs in CI.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
from collections.abc import Sequence

import asyncpg
import uvloop

from bench.cpu import cpu_seconds
from bench.harness import REPO_ROOT
from bench.outbox import CLEAR_LEAN, LEAN_OUTBOX, LEAN_TRIGGER
from bench.producer import produce
from bench.suite import ENDPOINTS
from engine.cli.embedded_postgres import TemporaryPostgres
from engine.db.migrate import migrate

ACCOUNTS = "layers_"
FAN_OUT_BATCH = 200
# The example trigger's payload, as every layer builds it.
PAYLOAD = """jsonb_build_object('email_event_id', NEW.id, 'recipient', NEW.recipient,
                                   'campaign_id', NEW.campaign_id, 'occurred_at', NEW.occurred_at)
                    || NEW.details"""
SUBSCRIBERS = """FROM webhooks.endpoints e
         WHERE e.account_id = NEW.account_id AND e.enabled
           AND webhooks.subscribes(e.event_types, 'email.' || NEW.kind)"""
INLINE_INSERTS = f"""
        INSERT INTO webhooks.events (account_id, type, payload)
        VALUES (NEW.account_id, 'email.' || NEW.kind, {PAYLOAD})
        RETURNING id INTO v_event_id;
        INSERT INTO webhooks.deliveries (event_id, event_created_at, event_type, endpoint_id)
        SELECT v_event_id, now(), 'email.' || NEW.kind, e.id {SUBSCRIBERS};"""
GUARD = "webhooks.subscribed(NEW.account_id, 'email.' || NEW.kind)"
LAYERS_SQL = f"""
CREATE OR REPLACE FUNCTION app.layer_engine_tables() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    v_event_id bigint;
BEGIN
    IF EXISTS (SELECT {SUBSCRIBERS}) THEN{INLINE_INSERTS}
    END IF;
    RETURN NULL;
END $$;

CREATE OR REPLACE FUNCTION app.layer_guard() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    v_event_id bigint;
BEGIN
    IF {GUARD} THEN{INLINE_INSERTS}
    END IF;
    RETURN NULL;
END $$;

CREATE OR REPLACE FUNCTION app.layer_bare_emit(
    p_account_id text, p_event_type text, p_payload jsonb)
RETURNS bigint LANGUAGE plpgsql AS $$
DECLARE
    v_event_id bigint;
BEGIN
    INSERT INTO webhooks.events (account_id, type, payload)
    VALUES (p_account_id, p_event_type, p_payload)
    RETURNING id INTO v_event_id;
    INSERT INTO webhooks.deliveries (event_id, event_created_at, event_type, endpoint_id)
    SELECT v_event_id, now(), p_event_type, e.id FROM webhooks.endpoints e
     WHERE e.account_id = p_account_id AND e.enabled
       AND webhooks.subscribes(e.event_types, p_event_type);
    RETURN v_event_id;
END $$;

CREATE OR REPLACE FUNCTION app.layer_call() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF {GUARD} THEN
        PERFORM app.layer_bare_emit(NEW.account_id, 'email.' || NEW.kind, {PAYLOAD});
    END IF;
    RETURN NULL;
END $$;"""
# (name, trigger function), the lean outbox first: the others are reported against it.
LAYERS: tuple[tuple[str, str], ...] = (
    ("lean outbox", LEAN_TRIGGER),
    ("+ the engine's tables", "layer_engine_tables"),
    ("+ the guard (webhooks.subscribed)", "layer_guard"),
    ("+ the inserts in a called function", "layer_call"),
    ("emit (checks, probe, intake row): the example", "email_event_webhook"),
)
CLEAR = "TRUNCATE webhooks.deliveries, webhooks.events, webhooks.intake, app.email_events"
# As an engine that died asleep leaves the mark: no NOTIFY (W6 "c, engine stopped").
DEAD_MARK = "UPDATE webhooks.engine_state SET waiting_until = now() - interval '1 second'"


async def install(conn: asyncpg.Connection) -> None:
    await migrate(conn)
    await conn.execute((REPO_ROOT / "sql" / "examples" / "misarmail_app.sql").read_text())
    await conn.execute(LEAN_OUTBOX)
    await conn.execute(LAYERS_SQL)
    for i in range(ENDPOINTS):
        await conn.execute(
            "SELECT webhooks.create_endpoint($1, 'https://example.com/hook', '{*}')",
            f"{ACCOUNTS}{i}",
        )


async def measure(
    url: str, rounds: int, seconds: float, connections: int
) -> tuple[dict[str, tuple[list[float], list[float]]], tuple[int, float]]:
    """Per layer: its commit rate in each round, and that rate over the lean outbox's; then
    :func:`fan_out_cost` of the intake's rows."""
    conn = await asyncpg.connect(url)
    try:
        await install(conn)
        rates: dict[str, list[float]] = {name: [] for name, _ in LAYERS}
        for _ in range(rounds):
            for name, trigger in LAYERS:
                await conn.execute("DROP TRIGGER IF EXISTS email_event_webhook ON app.email_events")
                await conn.execute(CLEAR)
                await conn.execute(CLEAR_LEAN)
                await conn.execute(
                    "CREATE TRIGGER email_event_webhook AFTER INSERT ON app.email_events"
                    f" FOR EACH ROW EXECUTE FUNCTION app.{trigger}()"
                )
                await conn.execute(DEAD_MARK)
                await conn.execute("CHECKPOINT")
                commits, elapsed = await produce(url, ACCOUNTS, connections, seconds)
                rates[name].append(commits / elapsed)
        lean = rates[LAYERS[0][0]]
        return {
            name: (values, [v / base for v, base in zip(values, lean, strict=True)])
            for name, values in rates.items()
        }, await fan_out_cost(conn)
    finally:
        await conn.close()


async def fan_out_cost(conn: asyncpg.Connection) -> tuple[int, float]:
    """Fan out what the example's last round accepted, FAN_OUT_BATCH rows per call (its own
    transaction each, as an engine's claims are): (events, server CPU per event in µs)."""
    pid = await conn.fetchval("SELECT pg_backend_pid()")
    events = 0
    before = cpu_seconds(pid)
    while moved := await conn.fetchval("SELECT webhooks.fan_out_v1($1)", FAN_OUT_BATCH):
        events += moved
    spent = cpu_seconds(pid) - before
    return events, spent * 1e6 / events if events else 0.0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.emit_layers", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--seconds", type=float, default=4.0, help="per layer and round")
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--url", help="an empty database to use instead of an embedded Postgres")
    args = parser.parse_args(argv)
    server = None
    url = args.url
    if url is None:
        server = TemporaryPostgres(durable=True)
        url = server.start()
    try:
        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
            result, (events, fan_out_us) = runner.run(
                measure(url, args.rounds, args.seconds, args.connections)
            )
    finally:
        if server is not None:
            server.stop()
    print(f"{'layer':48} {'commits/s':>10} {'/ lean outbox':>14}  rounds / lean")
    for name, (rates, ratios) in result.items():
        spread = " ".join(f"{r:.2f}" for r in ratios)
        rate, ratio = statistics.median(rates), statistics.median(ratios)
        print(f"{name:48} {rate:10,.0f} {ratio:14.2f}  {spread}")
    print(
        f"the engine's fan-out of the example's last round ({events:,} events, {FAN_OUT_BATCH}"
        f" per call): {fan_out_us:.1f} us server CPU per event"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
