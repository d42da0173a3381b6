"""webhooks.emit_many on a real Postgres: the set-based emit of statement-level triggers.

It must follow emit's rules event by event (who receives what, idempotency keys, size and depth,
errors naming the field), name the event's position in its errors, and write nothing for accounts
without endpoints. Equivalence with emit is checked on one mixed set of events, run both ways.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any
from uuid import UUID

import asyncpg
import pytest

from engine.db import sqlfiles
from tests.support.db import error_of, fan_out, listening, sql_endpoint, wait_for_lock_wait

# Events as JSON: [{"account_id", "event_type", "payload", "key"}, ...] in order; a missing field
# is SQL NULL, so a test can pass anything emit_many may be given.
EMIT_MANY = """
SELECT webhooks.emit_many(ARRAY(
    SELECT ROW(e->>'account_id', e->>'event_type', e->'payload', e->>'key')::webhooks.new_event
      FROM jsonb_array_elements($1::jsonb) WITH ORDINALITY AS a(e, i) ORDER BY i))"""
EMIT = "SELECT webhooks.emit($1, $2, $3::jsonb, $4)"
# What was stored, without ids: each event with the endpoints it goes to.
STORED = """
SELECT ev.account_id, ev.type, ev.payload::text AS payload, ev.idempotency_key AS key,
       array_agg(d.endpoint_id::text ORDER BY d.endpoint_id) AS endpoints
  FROM webhooks.events ev JOIN webhooks.deliveries d ON d.event_id = ev.id
 GROUP BY ev.id, ev.account_id, ev.type, ev.payload::text, ev.idempotency_key ORDER BY ev.id"""


def event(
    account_id: str | None = "acct_1",
    event_type: str | None = "email.sent",
    payload: Any = None,
    key: str | None = None,
) -> dict[str, Any]:
    item: dict[str, Any] = {
        "account_id": account_id,
        "event_type": event_type,
        "payload": {"n": 1} if payload is None else payload,
    }
    if key is not None:
        item["key"] = key
    return item


async def emit_many(conn: asyncpg.Connection, events: list[dict[str, Any]]) -> int:
    stored: int = await conn.fetchval(EMIT_MANY, json.dumps(events))
    return stored


async def counts(conn: asyncpg.Connection) -> tuple[int, int, int]:
    """Events, deliveries and keys, once what the intake holds is fanned out."""
    await fan_out(conn)
    row = await conn.fetchrow(
        """SELECT (SELECT count(*) FROM webhooks.events),
                  (SELECT count(*) FROM webhooks.deliveries),
                  (SELECT count(*) FROM webhooks.idempotency_keys)"""
    )
    assert row is not None
    return row[0], row[1], row[2]


async def stored(conn: asyncpg.Connection) -> list[tuple[Any, ...]]:
    await fan_out(conn)
    return [tuple(r) for r in await conn.fetch(STORED)]


async def test_events_go_to_the_endpoints_that_take_them(tx: asyncpg.Connection) -> None:
    """Each event is stored once, with one delivery per enabled endpoint of its account that
    subscribes to its type, in the events' order; the count of stored events is returned."""
    both = await sql_endpoint(tx, ["*"], "acct_1")
    sent_only = await sql_endpoint(tx, ["email.sent"], "acct_1")
    other = await sql_endpoint(tx, ["email.*"], "acct_2")
    events = [
        event("acct_1", "email.sent", {"n": 1}),
        event("acct_none", "email.sent", {"n": 2}),
        event("acct_2", "email.opened", {"n": 3}),
        event("acct_1", "contact.created", {"n": 4}),
        event("acct_2", "contact.created", {"n": 5}),
    ]
    assert await emit_many(tx, events) == 3
    await fan_out(tx)
    rows = await tx.fetch(
        """SELECT ev.account_id, ev.type, ev.payload->>'n' AS n, d.endpoint_id,
                  d.event_created_at = ev.created_at AS same_time, d.ready, d.attempts
             FROM webhooks.events ev JOIN webhooks.deliveries d ON d.event_id = ev.id
            ORDER BY ev.id, d.id"""
    )
    assert sorted((r["n"], r["endpoint_id"]) for r in rows) == sorted(
        [("1", both), ("1", sent_only), ("3", other), ("4", both)]
    )
    assert [r["n"] for r in rows if r["endpoint_id"] == both] == ["1", "4"]  # in order
    assert all(r["same_time"] and r["ready"] and r["attempts"] == 0 for r in rows)


async def test_accounts_without_endpoints_write_nothing(tx: asyncpg.Connection) -> None:
    """No enabled endpoint takes any event: nothing is written, 0 is returned; so for an empty
    array."""
    disabled = await sql_endpoint(tx, ["*"], "acct_off")
    await tx.execute("SELECT webhooks.disable_endpoint($1, 'test')", disabled)
    await sql_endpoint(tx, ["contact.*"], "acct_1")
    events = [event("acct_none"), event("acct_off"), event("acct_1", "email.sent")]
    assert await emit_many(tx, events) == 0
    assert await emit_many(tx, []) == 0
    assert await counts(tx) == (0, 0, 0)


async def test_same_result_as_emit_one_by_one(tx: asyncpg.Connection) -> None:
    """A mixed set (several accounts, wildcards, a disabled endpoint, filters, keys repeated in the
    set and from before) stores exactly what emit stores when called for each event in order."""
    await sql_endpoint(tx, ["*"], "acct_1")
    await sql_endpoint(tx, ["email.sent", "contact.*"], "acct_1")
    hard = await sql_endpoint(tx, ["email.bounced"], "acct_2")
    await tx.execute(
        "UPDATE webhooks.endpoints SET filter = '$.bounce_type == \"hard\"' WHERE id = $1", hard
    )
    off = await sql_endpoint(tx, ["*"], "acct_2")
    await tx.execute("SELECT webhooks.disable_endpoint($1, 'test')", off)
    await tx.execute(EMIT, "acct_1", "email.sent", json.dumps({"before": True}), "k-old")
    events = [
        event("acct_1", "email.sent", {"n": 1}),
        event("acct_1", "email.opened", {"n": 2}, key="k-1"),
        event("acct_2", "email.bounced", {"n": 3, "bounce_type": "hard"}),
        event("acct_2", "email.bounced", {"n": 4, "bounce_type": "soft"}),
        event("acct_1", "contact.updated", {"n": 5}, key="k-1"),  # repeated in the set
        event("acct_1", "email.sent", {"n": 6}, key="k-old"),  # repeated from before
        event("acct_3", "email.sent", {"n": 7}, key="k-2"),  # no endpoint: key not kept
        event("acct_1", "contact.created", {"n": 8}, key="k-2"),  # so this one is stored
        event("acct_2", "email.opened", {"n": 9}),
    ]
    one_by_one_run = tx.transaction()  # a savepoint inside tx, rolled back below
    await one_by_one_run.start()
    for e in events:
        await tx.fetchval(
            EMIT, e["account_id"], e["event_type"], json.dumps(e["payload"]), e.get("key")
        )
    one_by_one = await stored(tx)
    keys = await tx.fetch("SELECT account_id, key FROM webhooks.idempotency_keys ORDER BY 1, 2")
    await one_by_one_run.rollback()

    assert await emit_many(tx, events) == len(one_by_one) - 1  # less the event from before
    assert await stored(tx) == one_by_one
    assert keys == await tx.fetch(
        "SELECT account_id, key FROM webhooks.idempotency_keys ORDER BY 1, 2"
    )
    assert [r[1] for r in keys] == ["k-1", "k-2", "k-old"]


INVALID = [
    pytest.param(
        {"account_id": ""}, "WH001", "account_id", "must not be empty", id="empty-account"
    ),
    pytest.param(
        {"account_id": None}, "WH001", "account_id", "must not be empty", id="null-account"
    ),
    pytest.param({"event_type": "email.nope"}, "WH002", "event_type", "unknown", id="unknown-type"),
    pytest.param({"event_type": None}, "WH002", "event_type", "unknown", id="null-type"),
    pytest.param({"payload": [1]}, "WH001", "payload", "JSON object, got array", id="array"),
    pytest.param({"payload": "null"}, "WH001", "payload", "got null", id="json-null"),
    pytest.param({"key": ""}, "WH001", "idempotency_key", "1 to 255", id="empty-key"),
    pytest.param({"key": "k" * 256}, "WH001", "idempotency_key", "1 to 255", id="long-key"),
]


@pytest.mark.parametrize("with_subscriber", [True, False], ids=["subscribed", "no-subscriber"])
@pytest.mark.parametrize(("overrides", "sqlstate", "column", "reason"), INVALID)
async def test_a_bad_event_fails_the_call_naming_its_position_and_field(
    tx: asyncpg.Connection,
    overrides: dict[str, Any],
    sqlstate: str,
    column: str,
    reason: str,
    with_subscriber: bool,
) -> None:
    """The second of three events is bad: the error is emit's, prefixed with events[2] (and the
    key, when the event has one), and nothing of the good events is written."""
    if with_subscriber:
        await sql_endpoint(tx, ["*"])
    bad = event()
    if "payload" in overrides:
        bad["payload"] = None if overrides["payload"] == "null" else overrides["payload"]
    for field in ("account_id", "event_type", "key"):
        if field in overrides:
            bad[field] = overrides[field]
    error = await error_of(tx, emit_many(tx, [event(), bad, event()]))
    assert error.sqlstate == sqlstate
    assert error.column_name == column
    where = "events[2]" + (f" (idempotency_key '{bad['key'][:100]}')" if "key" in bad else "")
    assert error.message.startswith(f"{where}: {column}: ")
    assert reason in error.message
    assert await counts(tx) == (0, 0, 0)


async def test_a_null_event_or_array_is_refused(tx: asyncpg.Connection) -> None:
    error = await error_of(tx, tx.fetchval("SELECT webhooks.emit_many(NULL)"))
    assert (error.sqlstate, error.column_name) == ("WH001", "events")
    error = await error_of(
        tx, tx.fetchval("SELECT webhooks.emit_many(ARRAY[NULL]::webhooks.new_event[])")
    )
    assert error.message.startswith("events[1]: account_id: ")


ZERO_BASED = """
DO $$
DECLARE
    v_events webhooks.new_event[];
BEGIN
    v_events[0] := ROW('acct_1', 'email.sent', '{"n": 0}', NULL);
    v_events[1] := ROW('acct_1', {second}, '{"n": 1}', NULL);
    PERFORM webhooks.emit_many(v_events);
END $$"""


async def test_events_are_read_by_their_subscripts_in_one_dimension(tx: asyncpg.Connection) -> None:
    """An empty array stores nothing. An array whose subscripts start at 0 is read whole and in
    order, and an error names the subscript. An array of two dimensions is refused, naming them."""
    await sql_endpoint(tx, ["*"])
    assert await tx.fetchval("SELECT webhooks.emit_many('{}')") == 0
    await tx.execute(ZERO_BASED.replace("{second}", "'email.opened'"))
    assert [(r[1], r[2]) for r in await stored(tx)] == [
        ("email.sent", '{"n": 0}'),
        ("email.opened", '{"n": 1}'),
    ]
    error = await error_of(tx, tx.execute(ZERO_BASED.replace("{second}", "'email.nope'")))
    assert error.message.startswith("events[1]: event_type: unknown event type 'email.nope'")
    error = await error_of(
        tx,
        tx.fetchval(
            "SELECT webhooks.emit_many(ARRAY[[ROW('acct_1', 'email.sent', '{}', NULL)]]"
            "::webhooks.new_event[])"
        ),
    )
    assert (error.sqlstate, error.column_name) == ("WH001", "events")
    assert error.message.startswith("events: must be a one-dimensional array, got 2 dimensions")


async def test_size_and_depth_are_checked_for_stored_events_only(tx: asyncpg.Connection) -> None:
    """As emit: a payload over max_payload_bytes (WH003) or nested deeper than 32 levels fails
    the call, naming the event, when an endpoint takes it; the same payload for an account
    without endpoints is not stored and not checked."""
    await sql_endpoint(tx, ["*"])
    big = {"body": "x" * 300}
    size = len(json.dumps(big))  # jsonb's text form of a one-key object is the same
    deep: Any = 1
    for _ in range(32):
        deep = [deep]
    await tx.execute("UPDATE webhooks.settings SET max_payload_bytes = $1", size - 1)
    error = await error_of(tx, emit_many(tx, [event(), event(payload=big, key="big")]))
    assert error.sqlstate == "WH003"
    assert error.message == (
        f"events[2] (idempotency_key 'big'): payload: {size} bytes is over the limit of"
        f" {size - 1} bytes"
    )
    error = await error_of(tx, emit_many(tx, [event(payload={"d": deep})]))
    assert (error.sqlstate, error.column_name) == ("WH001", "payload")
    assert error.message == "events[1]: payload: must not nest deeper than 32 levels"
    # Of several stored events that fail, the first in the array is named, with keys or without.
    for key in (None, "k"):
        for first, second in ((big, {"d": deep}), ({"d": deep}, big)):
            events = [
                event(key=key and f"{key}1"),
                event(payload=first, key=key and f"{key}2"),
                event(payload=second, key=key and f"{key}3"),
            ]
            error = await error_of(tx, emit_many(tx, events))
            where = "events[2]" + (f" (idempotency_key '{key}2')" if key else "") + ": payload: "
            assert error.message.startswith(where), error.message
            assert ("deeper" in error.message) == (first is not big)
    assert (
        await emit_many(
            tx, [event("acct_none", payload=big), event("acct_none", payload={"d": deep})]
        )
        == 0
    )
    await tx.execute("UPDATE webhooks.settings SET max_payload_bytes = $1", size)
    assert await emit_many(tx, [event(payload=big), event(payload={"d": deep[0]})]) == 2


async def test_concurrent_keys_wait_and_store_once(db_url: str, conn: asyncpg.Connection) -> None:
    """A second emit_many with a key the first holds uncommitted waits for it; once the first
    commits, the second stores only its other event."""
    first, second = await asyncpg.connect(db_url), await asyncpg.connect(db_url)
    try:
        await sql_endpoint(first, ["email.sent"])
        tx1, tx2 = first.transaction(), second.transaction()
        await tx1.start()
        await tx2.start()
        assert await emit_many(first, [event(key="same")]) == 1
        pending = asyncio.ensure_future(emit_many(second, [event(key="same"), event(key="other")]))
        await wait_for_lock_wait(conn, second.get_server_pid())
        assert not pending.done()
        await tx1.commit()
        assert await pending == 1
        await tx2.commit()
        assert await counts(conn) == (2, 2, 2)
    finally:
        await first.close()
        await second.close()


async def test_emit_many_notifies_only_while_the_engine_waits(
    db_url: str, conn: asyncpg.Connection
) -> None:
    """One NOTIFY per call with a mark in the future, none without one or when nothing is stored."""
    await sql_endpoint(conn, ["*"])
    async with listening(db_url) as listener:
        await emit_many(conn, [event(), event()])
        assert await listener.drain() == []
        await conn.execute(
            "UPDATE webhooks.engine_state SET waiting_until = now() + interval '1 hour'"
        )
        await emit_many(conn, [event("acct_none")])
        assert await listener.drain() == []
        await emit_many(conn, [event(), event()])
        assert await listener.drain() == [""]


async def test_emit_many_opens_no_subtransaction(tx: asyncpg.Connection) -> None:
    """Every row carries the app transaction's own xid, keys and replayed keys included."""
    await sql_endpoint(tx, ["*"])
    await emit_many(tx, [event(key="a"), event(key="b"), event()])
    await emit_many(tx, [event(key="a"), event()])
    top = await tx.fetchval("SELECT pg_current_xact_id()::xid::text")
    xmins = await tx.fetch(
        """SELECT xmin::text AS x FROM webhooks.idempotency_keys
           UNION SELECT xmin::text FROM webhooks.events
           UNION SELECT xmin::text FROM webhooks.deliveries"""
    )
    assert [r["x"] for r in xmins] == [top]


# -- the example's statement-level trigger ---------------------------------------------------------


@pytest.fixture
async def app(conn: asyncpg.Connection) -> asyncpg.Connection:
    await conn.execute((sqlfiles.sql_root() / "examples" / "misarmail_app.sql").read_text())
    return conn


BULK_SENDS = """
INSERT INTO app.campaign_sends (account_id, campaign_id, recipient, message_id)
SELECT 'acct_' || (g % $2), 'cmp_1', 'user' || g || '@example.test', '<' || g || '@mail.test>'
  FROM generate_series(1, $1) AS g"""


async def test_example_bulk_insert_emits_one_event_per_row(app: asyncpg.Connection) -> None:
    """A thousand-row insert into app.campaign_sends stores one email.sent event per row of the
    subscribed accounts, in row order, with the example's payload; other accounts' rows none."""
    endpoints: dict[str, UUID] = {}
    for n in range(3):
        endpoints[f"acct_{n}"] = await sql_endpoint(app, ["email.sent"], f"acct_{n}")
    await app.execute(BULK_SENDS, 1000, 4)  # acct_3 has no endpoint
    sends = await app.fetch("SELECT * FROM app.campaign_sends ORDER BY id")
    await fan_out(app)
    events = await app.fetch("SELECT * FROM webhooks.events ORDER BY id")
    expected = [s for s in sends if s["account_id"] != "acct_3"]
    assert len(events) == len(expected) == 750
    for send, ev in zip(expected, events, strict=True):
        assert ev["account_id"] == send["account_id"]
        assert ev["type"] == "email.sent"
        payload = json.loads(ev["payload"])
        assert payload["campaign_send_id"] == send["id"]
        assert payload["recipient"] == send["recipient"]
        assert payload["message_id"] == send["message_id"]
    deliveries = await app.fetch(
        """SELECT ev.account_id, d.endpoint_id FROM webhooks.deliveries d
             JOIN webhooks.events ev ON ev.id = d.event_id"""
    )
    assert len(deliveries) == 750
    assert all(endpoints[d["account_id"]] == d["endpoint_id"] for d in deliveries)


async def test_a_bad_row_fails_the_app_statement(app: asyncpg.Connection) -> None:
    """A statement-level trigger whose row builds a bad event fails the app's INSERT, naming the
    row's position, and the app's rows are not written either."""
    await sql_endpoint(app, ["*"])
    await app.execute(
        """CREATE FUNCTION app.kinds_webhook() RETURNS trigger LANGUAGE plpgsql AS $$
           BEGIN
               PERFORM webhooks.emit_many(ARRAY(
                   SELECT ROW(n.account_id, 'email.' || n.kind, '{}', NULL)::webhooks.new_event
                     FROM new_rows n ORDER BY n.id));
               RETURN NULL;
           END $$;
           CREATE TRIGGER kinds_webhook AFTER INSERT ON app.email_events
               REFERENCING NEW TABLE AS new_rows FOR EACH STATEMENT
               EXECUTE FUNCTION app.kinds_webhook();
           DROP TRIGGER email_event_webhook ON app.email_events;"""
    )
    error = await error_of(
        app,
        app.execute(
            """INSERT INTO app.email_events (account_id, kind, recipient)
               VALUES ('acct_1', 'sent', 'a@x'), ('acct_1', 'sent', 'b@x'),
                      ('acct_1', 'delivered', 'c@x')"""
        ),
    )
    assert error.message == "events[3]: event_type: unknown event type 'email.delivered'"
    assert await app.fetchval("SELECT count(*) FROM app.email_events") == 0
    assert await counts(app) == (0, 0, 0)


# -- the guard of statement-level triggers ---------------------------------------------------------

SUBSCRIBED_ACCOUNTS = "SELECT webhooks.subscribed_accounts($1::text[], $2::text[])"


async def subscribed_accounts(
    conn: asyncpg.Connection, account_ids: list[str] | None, event_types: list[str] | None
) -> list[str]:
    found: list[str] = await conn.fetchval(SUBSCRIBED_ACCOUNTS, account_ids, event_types)
    return sorted(found)


async def test_subscribed_accounts_are_those_an_enabled_endpoint_subscribes_for(
    tx: asyncpg.Connection,
) -> None:
    """The accounts among those given that have an enabled endpoint subscribing to any of the
    types, each once; an account whose only endpoint is disabled is among them once it is enabled
    again."""
    await sql_endpoint(tx, ["email.sent"], "acct_1")
    await sql_endpoint(tx, ["email.*"], "acct_2")
    await sql_endpoint(tx, ["contact.created"], "acct_3")
    disabled = await sql_endpoint(tx, ["*"], "acct_4")
    await tx.execute("UPDATE webhooks.endpoints SET enabled = false WHERE id = $1", disabled)
    accounts = ["acct_1", "acct_2", "acct_3", "acct_4", "acct_5", "acct_1"]
    assert await subscribed_accounts(tx, accounts, ["email.sent"]) == ["acct_1", "acct_2"]
    assert await subscribed_accounts(tx, accounts, ["contact.created"]) == ["acct_3"]
    assert await subscribed_accounts(tx, accounts, ["email.opened", "contact.created"]) == [
        "acct_2",
        "acct_3",
    ]
    assert await subscribed_accounts(tx, ["acct_5"], ["email.sent"]) == []
    assert await subscribed_accounts(tx, [], ["email.sent"]) == []
    await tx.execute("UPDATE webhooks.endpoints SET enabled = true WHERE id = $1", disabled)
    assert await subscribed_accounts(tx, accounts, ["contact.created"]) == ["acct_3", "acct_4"]


@pytest.mark.parametrize(
    ("account_ids", "event_types", "sqlstate", "message"),
    [
        (None, ["email.sent"], "WH001", "account_ids: must be an array of account ids, not NULL"),
        (["acct_1"], None, "WH001", "event_types: must be an array of at least one event type"),
        (["acct_1"], [], "WH001", "event_types: must be an array of at least one event type"),
        (
            ["acct_1"],
            ["email.sent", "email.nope"],
            "WH002",
            "event_types[2]: event_type: unknown event type 'email.nope'",
        ),
        (
            ["acct_1"],
            ["email.sent", None],
            "WH002",
            "event_types[2]: event_type: unknown event type NULL",
        ),
        (
            ["acct_1", " ", "acct_2"],
            ["email.sent"],
            "WH001",
            "account_ids[2]: account_id: must not be empty",
        ),
        (
            ["acct_1", None],
            ["email.sent"],
            "WH001",
            "account_ids[2]: account_id: must not be empty",
        ),
        (
            ["a" * 200, "a" * 201],
            ["email.sent"],
            "WH001",
            "account_ids[2]: account_id: must be at most 200 characters",
        ),
    ],
)
async def test_subscribed_accounts_checks_every_element_with_or_without_endpoints(
    tx: asyncpg.Connection,
    account_ids: list[str | None] | None,
    event_types: list[str | None] | None,
    sqlstate: str,
    message: str,
) -> None:
    """As subscribed checks its arguments on every call, the guard checks every account and type,
    whether or not an endpoint subscribes (none does here), and names the element that is wrong
    (200 characters are accepted, 201 are not)."""
    error = await error_of(tx, tx.fetchval(SUBSCRIBED_ACCOUNTS, account_ids, event_types))
    assert (error.sqlstate, error.message) == (sqlstate, message)


async def test_example_guard_passes_only_subscribed_accounts_rows(
    app: asyncpg.Connection,
) -> None:
    """The example's statement-level trigger passes emit_many only the rows of subscribed accounts
    (what it saves, the payloads of the others, is measured by bench S): the error for a send too
    large to store names it as the first event, though it is the statement's second row, and the
    same send for an account without endpoints is inserted with nothing stored."""
    await sql_endpoint(app, ["email.sent"], "acct_1")
    limit = await app.fetchval("SELECT max_payload_bytes FROM webhooks.settings")
    insert = """INSERT INTO app.campaign_sends (account_id, campaign_id, recipient, message_id)
                VALUES ('acct_2', 'cmp_1', 'a@x', '<1@x>'), ($1, 'cmp_1', $2, '<2@x>')"""
    error = await error_of(app, app.execute(insert, "acct_1", "r" * limit))
    assert error.sqlstate == "WH003"
    assert error.message.startswith("events[1]: payload: "), error.message
    assert await app.fetchval("SELECT count(*) FROM app.campaign_sends") == 0
    await app.execute(insert, "acct_3", "r" * limit)
    assert await app.fetchval("SELECT count(*) FROM app.campaign_sends") == 2
    assert await counts(app) == (0, 0, 0)
