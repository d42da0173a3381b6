"""Erasure beside a running engine: what it sends after an erasure, and that it loses and repeats
nothing while erasures run."""

from __future__ import annotations

import asyncio
import json
from collections import Counter
from collections.abc import Awaitable, Callable

import asyncpg
import standardwebhooks

from engine import verify_signature
from tests.support.engines import RunningEngine, create_endpoint, wait_until
from tests.support.receiver import Receiver, Reply

StartEngine = Callable[..., Awaitable[RunningEngine]]
ADDRESS = "alice@example.com"
MARKER = "redacted@redacted.invalid"
# Long enough that a request the test holds never times out into a retry, whatever the load.
PATIENT = {"request_timeout_s": 30.0, "shutdown_grace_s": 35.0}


async def emit(conn: asyncpg.Connection, account: str, n: int) -> int:
    payload = {"recipient": ADDRESS, "n": n, "link": "https://t.example/?u=alice%40example.com"}
    event_id: int = await conn.fetchval(
        "SELECT webhooks.emit($1, 'email.opened', $2::jsonb)", account, json.dumps(payload)
    )
    return event_id


async def test_a_pending_delivery_of_an_erased_event_sends_the_redacted_payload_signed(
    conn: asyncpg.Connection, receiver: Receiver, open_policy: None, start_engine: StartEngine
) -> None:
    """Emitted before the erasure, sent after it: the body is the redacted one, and both
    signatures (computed at send time) verify over it."""
    _, secret = await create_endpoint(conn, receiver.url("/hook"))
    await emit(conn, "acct_1", 1)
    assert await conn.fetchval("SELECT webhooks.erase_recipient('acct_1', $1)", ADDRESS) == 1
    await start_engine()
    (request,) = await receiver.wait_for(1, "/hook", timeout_s=60)
    verify_signature(request.body, request.headers["X-MisarMail-Signature"], secret)
    envelope = standardwebhooks.Webhook(secret).verify(request.body, dict(request.headers))
    assert envelope["data"] == {
        "recipient": MARKER,
        "n": 1,
        "link": "https://t.example/?u=redacted%40redacted.invalid",
    }
    assert b"alice" not in request.body


async def test_erasures_during_delivery_lose_and_repeat_nothing(
    conn: asyncpg.Connection,
    db_url: str,
    receiver: Receiver,
    open_policy: None,
    start_engine: StartEngine,
) -> None:
    """An erasure while the engine holds leases, then erasures in a loop while it delivers and the
    app emits: every delivery arrives exactly once and is recorded delivered. Of the events there
    before, those claimed before the first erasure carry the address, all others the marker; in
    the end no acct_1 event holds it, and acct_2 keeps its own."""
    gate = asyncio.Event()
    receiver.script("/held", Reply(until=gate), Reply())
    await create_endpoint(conn, receiver.url("/held"), max_in_flight=1)
    await create_endpoint(conn, receiver.url("/other"), account="acct_2")
    first = [await emit(conn, "acct_1", n) for n in range(60)]
    others = [await emit(conn, "acct_2", n) for n in range(10)]
    await start_engine(**PATIENT)
    await receiver.wait_for(1, "/held", timeout_s=60)  # one in flight, held
    async with conn.transaction():
        # Claims wait from here to the commit, so what was leased before the erasure is exact.
        await conn.execute("LOCK TABLE webhooks.deliveries IN SHARE MODE")
        leased = await conn.fetchval(
            "SELECT count(*) FROM webhooks.deliveries d JOIN webhooks.endpoints e"
            " ON e.id = d.endpoint_id WHERE e.account_id = 'acct_1' AND d.lease_token IS NOT NULL"
        )
        erased = await conn.fetchval("SELECT webhooks.erase_recipient('acct_1', $1)", ADDRESS)
    assert 1 <= leased < len(first)
    assert erased == len(first)
    gate.set()

    emitted = list(first)
    done = asyncio.Event()

    async def app() -> None:
        app_conn = await asyncpg.connect(db_url)
        try:
            for n in range(60, 90):
                emitted.append(await emit(app_conn, "acct_1", n))
        finally:
            await app_conn.close()
            done.set()

    async def erasures() -> int:
        runs = 0
        eraser = await asyncpg.connect(db_url)
        try:
            while not done.is_set() or runs < 3:
                await eraser.fetchval("SELECT webhooks.erase_recipient('acct_1', $1)", ADDRESS)
                runs += 1
        finally:
            await eraser.close()
        return runs

    _, runs = await asyncio.gather(app(), erasures())
    assert runs >= 3
    await conn.fetchval("SELECT webhooks.erase_recipient('acct_1', $1)", ADDRESS)

    async def all_ended() -> bool:
        ended: int = await conn.fetchval("SELECT count(*) FROM webhooks.delivery_outcomes")
        return ended == len(emitted) + len(others)

    await wait_until(all_ended, timeout_s=120, what="every delivery recorded")
    assert await conn.fetchval("SELECT count(*) FROM webhooks.deliveries") == 0
    statuses = await conn.fetch("SELECT DISTINCT status FROM webhooks.delivery_outcomes")
    assert [r["status"] for r in statuses] == ["delivered"]
    held = receiver.received_on("/held")
    ids = Counter(r.headers["webhook-id"] for r in held)
    assert ids == Counter(f"evt_{e}" for e in emitted)  # each once: nothing lost, nothing repeated
    # Of the first events, those claimed before the first erasure carry the address, all others
    # the marker. Events emitted during the loop may be sent before an erasure reaches them.
    firsts = {f"evt_{e}" for e in first}
    before = [r for r in held if r.headers["webhook-id"] in firsts]
    with_address = [r for r in before if ADDRESS.encode() in r.body]
    assert len(with_address) == leased, "bodies with the address are those claimed before it"
    assert all(MARKER.encode() in r.body for r in before if r not in with_address)
    remaining = await conn.fetchval(
        "SELECT count(*) FROM webhooks.events WHERE account_id = 'acct_1' AND payload::text ~ $1",
        "alice",
    )
    assert remaining == 0
    other = receiver.received_on("/other")
    assert sorted(json.loads(r.body)["data"]["n"] for r in other) == list(range(10))
    assert all(ADDRESS.encode() in r.body for r in other)
