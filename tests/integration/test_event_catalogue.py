"""The event catalogue is a contract: its schemas hold the examples, the payloads the shipped app
triggers (sql/examples/misarmail_app.sql) and the demo produce, and test events send the examples.

Validated with jsonschema (Draft 2020-12) so that the documented payloads and the real ones cannot
drift apart: a trigger that adds or renames a field fails here until the catalogue says so.
"""

from __future__ import annotations

import json

import asyncpg
import pytest
from jsonschema import Draft202012Validator

from engine.cli import demo
from engine.db.sqlfiles import sql_root
from engine.db.store import Store
from tests.support.db import error_of, fan_out
from tests.support.engines import create_endpoint

OPERATIONAL = {"endpoint.disabled", "delivery.failed", "endpoint.recovered"}


async def schemas(conn: asyncpg.Connection) -> dict[str, Draft202012Validator]:
    rows = await conn.fetch("SELECT name, schema FROM webhooks.event_types")
    return {r["name"]: Draft202012Validator(json.loads(r["schema"])) for r in rows}


async def test_every_example_matches_its_schema(conn: asyncpg.Connection) -> None:
    """Each type has a valid JSON Schema, a description, and an example its schema accepts."""
    rows = await conn.fetch("SELECT name, description, schema, example FROM webhooks.event_types")
    assert len(rows) == 12
    for r in rows:
        schema = json.loads(r["schema"])
        Draft202012Validator.check_schema(schema)
        assert r["description"].strip(), r["name"]
        errors = list(Draft202012Validator(schema).iter_errors(json.loads(r["example"])))
        assert errors == [], (r["name"], [e.message for e in errors])
        assert schema["required"], r["name"]


async def test_the_schemas_refuse_what_they_do_not_describe(conn: asyncpg.Connection) -> None:
    """A schema is no rubber stamp: a missing required field or a wrong type fails it."""
    checks = await schemas(conn)
    example = json.loads(
        await conn.fetchval("SELECT example FROM webhooks.event_types WHERE name = 'email.bounced'")
    )
    assert checks["email.bounced"].is_valid(example)
    assert not checks["email.bounced"].is_valid({**example, "bounce_type": "medium"})
    assert not checks["email.bounced"].is_valid(
        {k: v for k, v in example.items() if k != "recipient"}
    )
    assert not checks["contact.created"].is_valid(
        {"contact_id": "7", "email": "a@b.c", "name": None, "tags": []}
    )


async def test_the_app_triggers_and_the_demo_emit_what_the_catalogue_describes(
    conn: asyncpg.Connection,
) -> None:
    """Every payload the example triggers build for the demo's writes matches its schema."""
    await conn.execute((sql_root() / "examples" / "misarmail_app.sql").read_text())
    await create_endpoint(conn, "https://example.com/h", account=demo.ACCOUNT, types=("*",))
    await demo._write_app_events(conn)
    # Also the shapes the demo does not write: no campaign, no name, no tags, extra details.
    await conn.execute(
        "INSERT INTO app.email_events (account_id, kind, recipient, details) VALUES"
        " ($1, 'clicked', 'a@example.com', '{\"url\": \"https://example.com/x\"}'),"
        " ($1, 'bounced', 'b@example.com', '{\"bounce_type\": \"soft\"}')",
        demo.ACCOUNT,
    )
    await conn.execute(
        "INSERT INTO app.contacts (account_id, email) VALUES ($1, 'c@example.com')", demo.ACCOUNT
    )
    checks = await schemas(conn)
    await fan_out(conn)
    events = await conn.fetch("SELECT type, payload FROM webhooks.events")
    types = {e["type"] for e in events}
    assert types >= {
        "contact.created", "contact.updated", "email.sent", "email.opened", "email.clicked",
        "email.bounced", "email.unsubscribed", "email.spam_complaint",
    }  # fmt: skip
    for e in events:
        errors = [x.message for x in checks[e["type"]].iter_errors(json.loads(e["payload"]))]
        assert errors == [], (e["type"], e["payload"], errors)


async def test_the_catalogue_lists_operational_types_for_the_operator_only(
    store: Store, conn: asyncpg.Connection
) -> None:
    """A customer's account sees the customer types; the operator and the operational account
    see the operational ones too."""
    everything = {t.name for t in await store.list_event_types()}
    assert everything > OPERATIONAL
    customer = {t.name for t in await store.list_event_types(account_id="acct_1")}
    assert customer == everything - OPERATIONAL
    await conn.execute("UPDATE webhooks.settings SET operational_account = 'ops'")
    assert {t.name for t in await store.list_event_types(account_id="ops")} == everything
    assert {t.name for t in await store.list_event_types(account_id="acct_1")} == customer


async def test_send_test_queues_the_example_marked_as_a_test(
    store: Store, conn: asyncpg.Connection
) -> None:
    """send_test stores the example as a test event for that endpoint alone, even one that does
    not subscribe to the type, and the log marks its delivery as a test."""
    endpoint, _ = await create_endpoint(conn, "https://example.com/h", types=("contact.*",))
    other, _ = await create_endpoint(conn, "https://example.com/o", types=("*",))
    delivery_id = await store.send_test(endpoint, "email.bounced")
    row = await conn.fetchrow(
        "SELECT ev.payload, ev.test, d.endpoint_id FROM webhooks.deliveries d"
        " JOIN webhooks.events ev ON ev.id = d.event_id WHERE d.id = $1",
        delivery_id,
    )
    assert row is not None
    example = await conn.fetchval(
        "SELECT example FROM webhooks.event_types WHERE name = 'email.bounced'"
    )
    assert (json.loads(row["payload"]), row["test"], row["endpoint_id"]) == (
        json.loads(example),
        True,
        endpoint,
    )
    assert await conn.fetchval("SELECT count(*) FROM webhooks.deliveries") == 1
    detail = await store.get_delivery(delivery_id)
    assert detail.delivery.test
    page = await store.list_deliveries()
    assert [(d.delivery_id, d.test) for d in page.items] == [(delivery_id, True)]
    assert await conn.fetchval(
        "SELECT test FROM webhooks.delivery_log WHERE delivery_id = $1", delivery_id
    )
    await store.emit("acct_1", "email.sent", {"email_event_id": 1})
    await fan_out(conn)
    page = await store.list_deliveries()
    # the app's email.sent goes to the endpoint that subscribes to it, and is no test
    assert sorted((d.endpoint_id == other, d.test) for d in page.items) == [
        (False, True),
        (True, False),
    ]
    assert other != endpoint


@pytest.mark.parametrize(
    ("event_type", "disable", "sqlstate", "column"),
    [
        ("email.nope", False, "WH002", "event_type"),
        ("email.sent", True, "WH006", "endpoint_id"),
    ],
)
async def test_send_test_refuses_unknown_types_and_disabled_endpoints(
    conn: asyncpg.Connection, event_type: str, disable: bool, sqlstate: str, column: str
) -> None:
    """An unknown type (WH002) or a disabled endpoint (WH006) is refused, naming the field."""
    endpoint, _ = await create_endpoint(conn, "https://example.com/h")
    if disable:
        await conn.execute("SELECT webhooks.disable_endpoint($1)", endpoint)
    error = await error_of(
        conn, conn.fetchval("SELECT webhooks.send_test($1, $2)", endpoint, event_type)
    )
    assert (error.sqlstate, error.column_name) == (sqlstate, column)
    assert await conn.fetchval("SELECT count(*) FROM webhooks.events") == 0


@pytest.mark.parametrize(("account", "accepted"), [("", False), ("ops", True), (None, True)])
async def test_the_operational_account_is_checked_when_set(
    conn: asyncpg.Connection, account: str | None, accepted: bool
) -> None:
    """settings.operational_account takes an account id or NULL (off), never a blank one."""
    call = conn.execute("UPDATE webhooks.settings SET operational_account = $1", account)
    if accepted:
        await call
        assert await conn.fetchval("SELECT operational_account FROM webhooks.settings") == account
    else:
        error = await error_of(conn, call)
        assert error.sqlstate == "23514"
