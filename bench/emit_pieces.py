"""What each piece of ``webhooks.emit`` costs the server, before and after issue 15's part 2.

``python -m bench.emit_pieces [--commits N] [--rounds R]`` starts an embedded Postgres, migrates it,
installs the example app and the lean outbox (bench.outbox), and gives 20 accounts one endpoint
each. Each variant is a row trigger of the example's shape (the ``webhooks.subscribed`` guard, then
an emit) calling a copy of emit with one piece taken out, "before" being emit as it was
(``tests/integration/sql_release_0005/30_emit.sql``) and "after" the shipped one, which since
migration 0011 writes one intake row in place of the event and its deliveries. A procedure
inserts N rows for subscribed accounts, committing after each, so every row pays the per-transaction
costs an app commit pays, without the client's round trips; the server CPU of that one backend
(``/proc/PID/stat``, 10 ms ticks) is divided by N. Variants take turns for R rounds and each
reports its median, less the insert without a trigger. It prints a table; nothing here runs in CI.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
from collections.abc import Sequence
from pathlib import Path

import asyncpg
import uvloop

from bench.cpu import cpu_seconds
from bench.harness import REPO_ROOT
from bench.outbox import LEAN_OUTBOX, LEAN_TRIGGER
from engine.cli.embedded_postgres import TemporaryPostgres
from engine.db.migrate import migrate

BEFORE = REPO_ROOT / "tests" / "integration" / "sql_release_0005" / "30_emit.sql"
AFTER = REPO_ROOT / "sql" / "functions" / "30_emit.sql"
PROBE_OLD = """    PERFORM FROM webhooks.endpoints e
     WHERE e.account_id = p_account_id AND e.enabled
       AND webhooks.subscribes(e.event_types, p_event_type)
     LIMIT 1;
    IF NOT FOUND THEN
        RETURN NULL;
    END IF;
"""
PROBE_NEW = PROBE_OLD.replace(
    "webhooks.subscribes(e.event_types, p_event_type)",
    "webhooks.takes(e.event_types, e.filter, p_event_type, p_payload)",
)
RETURNING_NEW = """    RETURNING id,
        (SELECT webhooks.storable(payload, s.max_payload_bytes)
                OR webhooks.reject_stored_payload(payload, s.max_payload_bytes, '')
           FROM webhooks.settings s),
        (SELECT CASE WHEN st.waiting_until > now() THEN pg_notify('webhooks_wakeup', '') END IS NULL
           FROM webhooks.engine_state st)
    INTO v_event_id, v_checked, v_woken;"""
WAKE_OLD = "IF (SELECT st.waiting_until > now() FROM webhooks.engine_state st) THEN"
RETURNING_BARE = "    RETURNING id INTO v_event_id;"
# (name, source file, [(text, replacement)]): emit with one piece taken out.
VARIANTS: tuple[tuple[str, Path, tuple[tuple[str, str], ...]], ...] = (
    ("before", BEFORE, ()),
    ("before, no size check", BEFORE, (("octet_length(p_payload::text)", "0"),)),
    (
        "before, no depth check",
        BEFORE,
        (("jsonb_path_exists(p_payload, 'strict $.**{33}')", "false"),),
    ),
    ("before, one subscriber lookup (no probe)", BEFORE, ((PROBE_OLD, ""),)),
    (
        "before, no settings read",
        BEFORE,
        (("SELECT s.max_payload_bytes INTO v_limit FROM webhooks.settings s;", "v_limit := 1e9;"),),
    ),
    (
        "before, no engine_state read",
        BEFORE,
        ((WAKE_OLD, "IF false THEN"),),
    ),
    ("after", AFTER, ()),
    ("after, no checks or reads on the insert", AFTER, ((RETURNING_NEW, RETURNING_BARE),)),
    ("after, no probe", AFTER, ((PROBE_NEW, ""),)),
)  # fmt: skip
# Not a copy of emit: the trigger differs.
UNGUARDED = "after, trigger without the guard"
TRIGGER = """
CREATE OR REPLACE FUNCTION app.{name}() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF {guard} THEN
        PERFORM {emit}(NEW.account_id, 'email.' || NEW.kind,
            jsonb_build_object('email_event_id', NEW.id, 'recipient', NEW.recipient,
                               'campaign_id', NEW.campaign_id, 'occurred_at', NEW.occurred_at)
                || NEW.details);
    END IF;
    RETURN NULL;
END $$"""
GUARD = "webhooks.subscribed(NEW.account_id, 'email.' || NEW.kind)"
LOOP = """
CREATE OR REPLACE PROCEDURE app.bench_commits(p_count integer) LANGUAGE plpgsql AS $$
BEGIN
    FOR i IN 1..p_count LOOP
        INSERT INTO app.email_events (account_id, kind, recipient, campaign_id, details)
        VALUES ('acct_' || (i % 20), 'sent', 'user' || i || '@example.test', 'cmp_000001',
                jsonb_build_object('message_id', '<' || i || '@mail.misarmail.test>',
                                   'subject', 'Your weekly digest', 'padding', repeat('x', 800)));
        COMMIT;
    END LOOP;
END $$"""
CLEAR = """TRUNCATE webhooks.deliveries, webhooks.events, webhooks.intake, app.email_events,
                   app.lean_events, app.lean_deliveries"""


def emit_copy(index: int, source: Path, cuts: Sequence[tuple[str, str]]) -> str:
    """The emit function of ``source`` (and, for the shipped file, emit_keyed after it) renamed
    to ``webhooks.emit_piece_<index>``, with each cut applied."""
    text = source.read_text()
    body = text[text.index("CREATE OR REPLACE FUNCTION webhooks.emit(") :]
    if "-- emit with an idempotency key" in body:
        body = body[: body.index("-- emit with an idempotency key")]
    body = body.replace("FUNCTION webhooks.emit(", f"FUNCTION webhooks.emit_piece_{index}(")
    for old, new in cuts:
        if old not in body:
            raise SystemExit(f"{source.name} no longer contains {old[:60]!r}: update this module")
        body = body.replace(old, new)
    return body


async def install(conn: asyncpg.Connection) -> dict[str, str]:
    """Every variant's trigger function; returns variant name -> trigger function."""
    await migrate(conn)
    await conn.execute((REPO_ROOT / "sql" / "examples" / "misarmail_app.sql").read_text())
    await conn.execute("DROP TRIGGER email_event_webhook ON app.email_events")
    await conn.execute(LEAN_OUTBOX)
    await conn.execute(LOOP)
    for i in range(20):
        await conn.execute(
            "SELECT webhooks.create_endpoint($1, 'https://example.com/hook', '{*}')", f"acct_{i}"
        )
    triggers = {"lean outbox": LEAN_TRIGGER}
    for i, (name, source, cuts) in enumerate(VARIANTS):
        await conn.execute(emit_copy(i, source, cuts))
        fn = f"emit_piece_{i}_trigger"
        await conn.execute(TRIGGER.format(name=fn, guard=GUARD, emit=f"webhooks.emit_piece_{i}"))
        triggers[name] = fn
    await conn.execute(TRIGGER.format(name="emit_unguarded", guard="true", emit="webhooks.emit"))
    triggers[UNGUARDED] = "emit_unguarded"
    return triggers


async def measure(url: str, commits: int, rounds: int) -> dict[str, float]:
    admin = await asyncpg.connect(url)
    worker = await asyncpg.connect(url)
    try:
        triggers = await install(admin)
        await worker.execute("SET synchronous_commit = off")  # CPU, not the disk's flush
        pid = await worker.fetchval("SELECT pg_backend_pid()")
        names = ["no trigger", *triggers]
        costs: dict[str, list[float]] = {name: [] for name in names}
        for _ in range(rounds):
            for name in names:
                await admin.execute("DROP TRIGGER IF EXISTS piece ON app.email_events")
                await admin.execute(CLEAR)
                if name != "no trigger":
                    await admin.execute(
                        "CREATE TRIGGER piece AFTER INSERT ON app.email_events FOR EACH ROW"
                        f" EXECUTE FUNCTION app.{triggers[name]}()"
                    )
                await worker.execute("CALL app.bench_commits(200)")  # plans cached
                before = cpu_seconds(pid)
                await worker.execute(f"CALL app.bench_commits({commits})")
                costs[name].append((cpu_seconds(pid) - before) * 1e6 / commits)
        return {name: statistics.median(values) for name, values in costs.items()}
    finally:
        await admin.close()
        await worker.close()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.emit_pieces", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--commits", type=int, default=10_000, help="rows per variant and round")
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args(argv)
    server = TemporaryPostgres()
    server.start()
    try:
        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
            costs = runner.run(measure(server.url, args.commits, args.rounds))
    finally:
        server.stop()
    base = costs["no trigger"]
    print(f"{'variant':50} {'us CPU/commit':>14} {'over no trigger':>16}")
    for name, value in costs.items():
        print(f"{name:50} {value:14.1f} {value - base:16.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
