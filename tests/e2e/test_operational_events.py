"""Operational events (issue 16 part 4) reach the operational account's endpoint, signed, with
data its catalogue schema describes; trouble with an operational endpoint itself emits nothing."""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable

import asyncpg
from jsonschema import Draft202012Validator

from engine import verify_signature
from tests.support.engines import RunningEngine, create_endpoint, wait_until
from tests.support.receiver import Receiver, Reply

StartEngine = Callable[..., Awaitable[RunningEngine]]
OPS = "ops"


async def test_disable_failure_and_recovery_reach_the_operational_account(
    open_policy: None, start_engine: StartEngine, receiver: Receiver, conn: asyncpg.Connection
) -> None:
    """A 410 sends endpoint.disabled and delivery.failed, retries running out delivery.failed,
    the next success endpoint.recovered; an operational endpoint that answers 410 is disabled
    without any event about it, and nothing else is emitted."""
    await conn.execute(
        "UPDATE webhooks.settings SET operational_account = $1, retry_schedule = '{1 second}'", OPS
    )
    ops_id, ops_secret = await create_endpoint(conn, receiver.url("/ops"), account=OPS)
    broken_id, _ = await create_endpoint(conn, receiver.url("/ops-broken"), account=OPS)
    receiver.script("/ops-broken", Reply(410))
    gone_id, _ = await create_endpoint(conn, receiver.url("/gone"), account="acct_c")
    receiver.script("/gone", Reply(410))
    flaky_id, _ = await create_endpoint(conn, receiver.url("/flaky"), account="acct_c")
    receiver.script("/flaky", Reply(500), Reply(500), Reply(200))
    await start_engine()

    await conn.execute("SELECT webhooks.emit('acct_c', 'email.sent', '{\"email_event_id\": 1}')")
    first = await receiver.wait_for(3, "/ops", timeout_s=20)
    await conn.execute("SELECT webhooks.emit('acct_c', 'email.sent', '{\"email_event_id\": 2}')")
    arrived = await receiver.wait_for(4, "/ops", timeout_s=20)
    assert arrived[:3] == first

    schemas = {
        r["name"]: Draft202012Validator(json.loads(r["schema"]))
        for r in await conn.fetch("SELECT name, schema FROM webhooks.event_types")
    }
    got: list[tuple[str, str, str | None]] = []
    for request in arrived:
        verify_signature(request.body, request.headers["X-MisarMail-Signature"], ops_secret)
        envelope = json.loads(request.body)
        assert envelope["account_id"] == OPS
        data = envelope["data"]
        errors = [e.message for e in schemas[envelope["type"]].iter_errors(data)]
        assert errors == [], (envelope["type"], data, errors)
        assert data["account_id"] == "acct_c"
        got.append((envelope["type"], data["endpoint_id"], data.get("reason")))
    assert sorted(got[:3]) == sorted(
        [
            ("delivery.failed", str(gone_id), None),
            ("endpoint.disabled", str(gone_id), "endpoint answered 410 Gone"),
            ("delivery.failed", str(flaky_id), None),
        ]
    )
    assert got[3] == ("endpoint.recovered", str(flaky_id), None)
    failed_flaky = next(
        json.loads(r.body)["data"]
        for r in arrived
        if json.loads(r.body)["type"] == "delivery.failed"
        and json.loads(r.body)["data"]["endpoint_id"] == str(flaky_id)
    )
    assert (failed_flaky["attempts"], failed_flaky["last_status_code"]) == (2, 500)

    # The broken operational endpoint was disabled by its 410, and no event says so; once
    # nothing is live, the operational account holds exactly the four events above.
    async def settled() -> bool:
        live = await conn.fetchval(  # an operational event may still wait in the intake
            "SELECT (SELECT count(*) FROM webhooks.deliveries)"
            " + (SELECT count(*) FROM webhooks.intake)"
        )
        disabled = await conn.fetchval(
            "SELECT NOT enabled FROM webhooks.endpoints WHERE id = $1", broken_id
        )
        return bool(live == 0 and disabled)

    await wait_until(settled, what="every delivery ended and the broken ops endpoint disabled")
    types = await conn.fetch("SELECT type, payload FROM webhooks.events WHERE account_id = $1", OPS)
    assert len(types) == 4
    assert str(broken_id) not in {json.loads(t["payload"])["endpoint_id"] for t in types}
    assert len(receiver.received_on("/ops")) == 4
    assert ops_id != broken_id


async def test_no_operational_account_no_operational_events(
    open_policy: None, start_engine: StartEngine, receiver: Receiver, conn: asyncpg.Connection
) -> None:
    """With operational_account NULL (the default) a 410 disables the endpoint and emits
    nothing, even with an endpoint subscribed to the operational types."""
    assert await conn.fetchval("SELECT operational_account FROM webhooks.settings") is None
    await create_endpoint(conn, receiver.url("/ops"), account=OPS)
    gone_id, _ = await create_endpoint(conn, receiver.url("/gone"), account="acct_c")
    receiver.script("/gone", Reply(410))
    await start_engine()
    await conn.execute("SELECT webhooks.emit('acct_c', 'email.sent', '{}')")

    async def disabled() -> bool:
        return bool(
            await conn.fetchval("SELECT NOT enabled FROM webhooks.endpoints WHERE id = $1", gone_id)
        )

    await wait_until(disabled, what="the 410 endpoint disabled")
    assert (
        await conn.fetchval("SELECT count(*) FROM webhooks.events WHERE account_id = $1", OPS) == 0
    )
