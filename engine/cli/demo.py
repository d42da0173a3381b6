"""``misar-webhooks demo``: the whole product on this machine in about fifteen seconds.

It starts an embedded Postgres, migrates it, creates MisarMail-like app tables whose triggers call
``webhooks.emit`` (sql/examples/misarmail_app.sql), registers three endpoints on a local receiver
that verifies every signature, writes a mix of email and contact events through those tables, lets
one endpoint fail its first tries so retries show, prints progress, and ends with the delivery log
and the SQL that produced it. Everything it started is stopped before it returns.

With ``keep`` it then leaves the engine, the receiver and Postgres running and prints a link to
the customer portal (``/portal#token=...``) for a newcomer to click around in, until Ctrl+C or
SIGTERM. The link carries a portal token for the demo account, minted as MisarMail's backend would
have the engine mint it, under ``portal_key`` (or a random key for this run).
"""

from __future__ import annotations

import asyncio
import collections
import json
import random
import secrets
import signal
import sys
import time
from dataclasses import dataclass, field

import asyncpg
from aiohttp import web

from engine import logs
from engine.app import Engine
from engine.cli.embedded_postgres import TemporaryPostgres
from engine.config import Settings
from engine.db.migrate import migrate
from engine.db.pool import connect
from engine.db.sqlfiles import sql_root
from engine.portal_tokens import DEFAULT_TTL, mint, portal_url
from engine.signing import SignatureError, verify_signature

ACCOUNT = "acct_demo"
EMAIL_KINDS = (
    "sent",
    "sent",
    "sent",
    "opened",
    "opened",
    "clicked",
    "bounced",
    "unsubscribed",
    "spam_complaint",
)
FLAKY_FAILURES = 2  # the flaky endpoint answers 503 this many times per event, then 200
TIMEOUT_S = 60.0

LOG_SQL = """\
SELECT d.delivery_id, d.event_type, e.description AS endpoint, d.status, d.attempts,
       d.last_status_code AS last_status
  FROM webhooks.delivery_log d
  JOIN webhooks.endpoints e ON e.id = d.endpoint_id
 ORDER BY d.attempts DESC, d.delivery_id
 LIMIT 8"""

ATTEMPTS_SQL = """\
SELECT a.delivery_id, a.attempt, a.status_code, a.outcome, a.duration_ms,
       a.next_attempt_at - a.started_at AS retry_after
  FROM webhooks.attempts a
 WHERE a.delivery_id = (SELECT min(delivery_id) FROM webhooks.delivery_log WHERE attempts > 1)
 ORDER BY a.attempt"""

SUMMARY_SQL = """\
SELECT e.description AS endpoint, d.status, count(*) AS deliveries, sum(d.attempts) AS attempts
  FROM webhooks.delivery_log d
  JOIN webhooks.endpoints e ON e.id = d.endpoint_id
 GROUP BY 1, 2
 ORDER BY 1, 2"""


@dataclass
class DemoReceiver:
    """The customer's side: verifies each signature, counts, fails the flaky path at first."""

    secrets: dict[str, str] = field(default_factory=dict)
    received: collections.Counter[str] = field(default_factory=collections.Counter)
    tries: collections.Counter[str] = field(default_factory=collections.Counter)
    bad_signatures: int = 0
    sample: tuple[dict[str, str], bytes] | None = None

    async def handle(self, request: web.Request) -> web.Response:
        name = request.match_info["name"]
        body = await request.read()
        try:
            verify_signature(
                body, request.headers.get("X-MisarMail-Signature", ""), self.secrets[name]
            )
        except (SignatureError, KeyError):
            self.bad_signatures += 1
            return web.Response(status=401, text="bad signature")
        key = f"{name}:{request.headers['webhook-id']}"
        self.tries[key] += 1
        if name == "flaky" and self.tries[key] <= FLAKY_FAILURES:
            return web.Response(status=503, text="try again later")
        self.received[name] += 1
        if self.sample is None:
            wanted = (
                "X-MisarMail-Event",
                "X-MisarMail-Signature",
                "webhook-id",
                "webhook-timestamp",
                "webhook-signature",
            )
            self.sample = ({h: request.headers[h] for h in wanted}, body)
        return web.Response(text="ok")


def main(settings: Settings, *, keep: bool = False) -> int:
    """Run the demo (the CLI calls this; it owns the event loop through asyncio.Runner).

    The engine's own log lines are kept to warnings and errors so the demo's output stays readable.
    """
    import uvloop

    logs.configure(
        "warning" if settings.log_level in ("debug", "info") else settings.log_level,
        settings.log_format,
    )

    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(_demo(settings, keep))


def say(text: str = "") -> None:
    print(text, flush=True)


async def _demo(settings: Settings, keep: bool) -> int:
    say("misar-webhooks demo: starting an embedded Postgres ...")
    server = TemporaryPostgres()
    await asyncio.to_thread(server.start)
    receiver = DemoReceiver()
    app = web.Application()
    app.router.add_post("/{name}", receiver.handle)
    web_runner = web.AppRunner(app, access_log=None)
    try:
        await web_runner.setup()
        site = web.TCPSite(web_runner, "127.0.0.1", 0)
        await site.start()
        port = web_runner.addresses[0][1]
        say(f"  Postgres at {server.url}; receiver at http://127.0.0.1:{port}")
        return await _with_services(server.url, port, receiver, settings, keep)
    finally:
        await web_runner.cleanup()
        await asyncio.to_thread(server.stop)
        say("  stopped the engine, the receiver and Postgres; nothing is left running.")


async def _with_services(
    url: str, port: int, receiver: DemoReceiver, settings: Settings, keep: bool
) -> int:
    portal_key = settings.portal_key or secrets.token_urlsafe(32)
    conn = await connect(url)
    try:
        await migrate(conn)
        await _prepare(conn, port, receiver)
        engine_settings = settings.replace(
            migrate=False,
            shutdown_grace_s=6.0,
            poll_interval_s=0.25,
            # Kept running, it listens where the settings say (8080 unless WEBHOOKS_ADMIN_PORT),
            # asks for an operator token that only this run knows, and signs portal tokens.
            admin_port=settings.admin_port if keep else 0,
            admin_token=(settings.admin_token or secrets.token_urlsafe(32)) if keep else None,
            portal_key=portal_key if keep else None,
        )
        engine = Engine(engine_settings, url)
        stop = asyncio.Event()
        task = asyncio.get_running_loop().create_task(engine.run(stop))
        try:
            await asyncio.wait_for(engine.started.wait(), timeout=30)
            say(
                "  engine started (LISTEN/NOTIFY wake-ups, 0.25 s poll fallback);"
                f" health and metrics at {engine.admin_url}/metrics"
            )
            total = await _write_app_events(conn)
            ok = await _watch(conn, total)
            if keep:
                await _report(conn, receiver)
                await _keep_running(f"{engine.admin_url}", portal_key)
        finally:
            stop.set()
            await asyncio.wait_for(task, timeout=30)
        if not keep:
            await _report(conn, receiver)
    finally:
        await conn.close()
    if not ok or receiver.bad_signatures:
        say("demo: FAILED (see above)")
        return 1
    say("demo: every event was delivered and every signature verified.")
    return 0


async def _keep_running(admin_url: str, portal_key: str) -> None:
    """Print the portal link and wait for Ctrl+C or SIGTERM."""
    token = mint(portal_key, ACCOUNT, DEFAULT_TTL)
    say("\nthe demo keeps running. The customer portal of account acct_demo, for a browser:")
    say(f"  {portal_url(admin_url, token.token)}")
    say(
        f"  (a portal token for {ACCOUNT} alone, valid until {token.expires_at:%H:%M} UTC, as"
        " MisarMail's backend would have the engine mint it for a logged-in customer)"
    )
    say("press Ctrl+C (or send SIGTERM) to stop everything.")
    done = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, done.set)
    try:
        await done.wait()
    finally:
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(signum)
    say("\nstopping ...")


async def _prepare(conn: asyncpg.Connection, port: int, receiver: DemoReceiver) -> None:
    # The receiver is on loopback over plain http: allowed here explicitly, refused by default.
    await conn.execute(
        "UPDATE webhooks.settings SET allow_http = true, allow_private_networks = true,"
        " retry_schedule = '{1 second, 2 seconds, 4 seconds}', request_timeout_s = 5"
    )
    await conn.execute((sql_root() / "examples" / "misarmail_app.sql").read_text())
    endpoints = [
        ("crm", ["contact.*", "email.unsubscribed"], "sync contacts and unsubscribes to the CRM"),
        ("analytics", ["*"], "raw event feed for dashboards"),
        ("flaky", ["email.bounced", "email.spam_complaint"], "list hygiene (fails at first)"),
    ]
    say("  endpoints:")
    for name, types, purpose in endpoints:
        row = await conn.fetchrow(
            "SELECT id, secret FROM webhooks.create_endpoint($1, $2, $3, $4)",
            ACCOUNT,
            f"http://127.0.0.1:{port}/{name}",
            types,
            name,
        )
        if row is None:
            raise RuntimeError(f"create_endpoint returned nothing for {name}")
        receiver.secrets[name] = row["secret"]
        say(f"    {name:<10} {', '.join(types):<38} {purpose}")


async def _write_app_events(conn: asyncpg.Connection) -> int:
    """Write app rows as MisarMail would; the triggers emit. Returns the deliveries expected."""
    rng = random.Random(7)  # noqa: S311 - picks demo data, not secrets
    async with conn.transaction():
        for i in range(12):
            await conn.execute(
                "INSERT INTO app.contacts (account_id, email, name, tags) VALUES ($1, $2, $3, $4)",
                ACCOUNT,
                f"reader{i}@example.com",
                f"Reader {i}",
                ["newsletter"],
            )
    async with conn.transaction():
        await conn.execute("UPDATE app.contacts SET tags = tags || '{vip}' WHERE id % 4 = 0")
    for batch in range(4):
        async with conn.transaction():
            for i in range(15):
                kind = rng.choice(EMAIL_KINDS)
                bounce = {"bounce_type": rng.choice(["hard", "soft"])}
                details = bounce if kind == "bounced" else {}
                await conn.execute(
                    "INSERT INTO app.email_events"
                    " (account_id, kind, recipient, campaign_id, details)"
                    " VALUES ($1, $2, $3, $4, $5::jsonb)",
                    ACCOUNT,
                    kind,
                    f"reader{(batch * 15 + i) % 12}@example.com",
                    "cmp_winter",
                    json.dumps(details),
                )
    # A change the app rolls back emits nothing.
    tx = conn.transaction()
    await tx.start()
    await conn.execute(
        "INSERT INTO app.email_events (account_id, kind, recipient) VALUES ($1, 'sent', 'x@y.z')",
        ACCOUNT,
    )
    await tx.rollback()
    # The engine is fanning the accepted events out meanwhile: both counts in one snapshot.
    counts = await conn.fetchrow(
        "SELECT (SELECT count(*) FROM webhooks.delivery_log) + b.deliveries AS deliveries,"
        "       (SELECT count(*) FROM webhooks.events) + b.events AS events"
        "  FROM webhooks.intake_backlog b"
    )
    if counts is None:  # the view always has one row
        raise RuntimeError("webhooks.intake_backlog returned no row")
    total, events = int(counts["deliveries"]), int(counts["events"])
    say(
        f"  the app wrote 12 contacts, 3 updates and 60 email events (and rolled one back):"
        f" {events} webhook events, {total} deliveries"
    )
    return total


async def _watch(conn: asyncpg.Connection, total: int) -> bool:
    started = time.monotonic()
    while True:
        rows = await conn.fetch(
            "SELECT status, count(*) AS n FROM webhooks.delivery_log GROUP BY 1"
        )
        counts = {r["status"]: int(r["n"]) for r in rows}
        ended = counts.get("delivered", 0) + counts.get("failed", 0) + counts.get("cancelled", 0)
        elapsed = time.monotonic() - started
        say(
            f"  [{elapsed:5.1f} s] delivered {counts.get('delivered', 0):3}/{total}"
            f"  retrying {counts.get('retrying', 0):2}  in flight {counts.get('in_flight', 0):2}"
            f"  pending {counts.get('pending', 0):3}  failed {counts.get('failed', 0)}"
        )
        if ended >= total:
            return counts.get("delivered", 0) == total
        if time.monotonic() - started > TIMEOUT_S:
            say("  gave up waiting")
            return False
        await asyncio.sleep(0.5)


async def _report(conn: asyncpg.Connection, receiver: DemoReceiver) -> None:
    if receiver.sample is not None:
        headers, body = receiver.sample
        say("\none request as the receiver got it:")
        for name, value in headers.items():
            say(f"  {name}: {value}")
        say(f"  body: {body.decode()[:300]}")
    queries = (
        ("the delivery log, most attempts first", LOG_SQL),
        ("every attempt of one retried delivery", ATTEMPTS_SQL),
        ("summary by endpoint", SUMMARY_SQL),
    )
    for title, sql in queries:
        say(f"\n{title}:\n{sql};")
        rows = await conn.fetch(sql)
        _print_table([dict(r) for r in rows])
    retried = sum(1 for key, n in receiver.tries.items() if key.startswith("flaky:") and n > 1)
    say(
        f"\nthe flaky endpoint failed {FLAKY_FAILURES} times for each of {retried} events; "
        f"each was retried and delivered. Signatures verified: {sum(receiver.received.values())},"
        f" rejected: {receiver.bad_signatures}."
    )


def _print_table(rows: list[dict[str, object]]) -> None:
    if not rows:
        say("  (no rows)")
        return
    columns = list(rows[0])
    widths = {c: max(len(c), *(len(str(r[c])) for r in rows)) for c in columns}
    say("  " + "  ".join(c.ljust(widths[c]) for c in columns))
    say("  " + "  ".join("-" * widths[c] for c in columns))
    for row in rows:
        say("  " + "  ".join(str(row[c]).ljust(widths[c]) for c in columns))


if __name__ == "__main__":
    sys.exit(main(Settings(log_level="warning")))
