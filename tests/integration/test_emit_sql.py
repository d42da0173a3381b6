"""webhooks.emit on a real Postgres: subscribers, idempotency and validation (its wake-up NOTIFY:
test_waiting_mark.py). emit writes an accepted event into the intake; the deliveries it leads to
are counted once fanned out (``fan_out``, as the engine's next claim does)."""

from __future__ import annotations

import asyncio
import json
import re
from typing import Any
from uuid import UUID

import asyncpg
import pytest

from tests.support.db import Listener, error_of, fan_out, sql_endpoint, wait_for_lock_wait

EMIT = "SELECT webhooks.emit($1, $2, $3::jsonb, $4)"
SUBSCRIBED = "SELECT webhooks.subscribed($1, $2)"


async def emit(
    conn: asyncpg.Connection,
    event_type: str = "email.sent",
    payload: Any = None,
    *,
    account_id: str | None = "acct_1",
    key: str | None = None,
) -> int | None:
    body = json.dumps({"message_id": "m1"} if payload is None else payload)
    event_id: int | None = await conn.fetchval(EMIT, account_id, event_type, body, key)
    return event_id


async def table_counts(conn: asyncpg.Connection) -> dict[str, int]:
    """The rows of each table, once what the intake holds is fanned out."""
    await fan_out(conn)
    row = await conn.fetchrow(
        """SELECT (SELECT count(*) FROM webhooks.events)           AS events,
                  (SELECT count(*) FROM webhooks.deliveries)       AS deliveries,
                  (SELECT count(*) FROM webhooks.idempotency_keys) AS keys"""
    )
    assert row is not None
    return dict(row.items())


async def delivered_to(conn: asyncpg.Connection, event_id: int) -> set[UUID]:
    await fan_out(conn)
    rows = await conn.fetch(
        "SELECT endpoint_id FROM webhooks.deliveries WHERE event_id = $1", event_id
    )
    return {r["endpoint_id"] for r in rows}


NOTHING = {"events": 0, "deliveries": 0, "keys": 0}


async def test_no_subscriber_returns_null_and_writes_nothing(conn: asyncpg.Connection) -> None:
    """With no endpoint in the account, emit returns NULL and writes no row."""
    assert await emit(conn) is None
    assert await table_counts(conn) == NOTHING


async def test_event_and_delivery_rows(conn: asyncpg.Connection) -> None:
    """A subscribed endpoint gets one delivery, due now, of the event stored with its payload."""
    endpoint_id = await sql_endpoint(conn, ["email.sent"])
    async with conn.transaction():
        event_id = await emit(conn, payload={"message_id": "m1", "to": "a@example.com"}, key="k")
        now = await conn.fetchval("SELECT now()")
    assert event_id is not None
    accepted = await conn.fetchrow("SELECT * FROM webhooks.intake")
    assert accepted is not None
    assert await conn.fetchval("SELECT count(*) FROM webhooks.deliveries") == 0
    assert await fan_out(conn) == 1
    assert await conn.fetchval("SELECT count(*) FROM webhooks.intake") == 0
    event = await conn.fetchrow("SELECT * FROM webhooks.events WHERE id = $1", event_id)
    assert event is not None
    assert dict(event.items()) == dict(accepted.items()) | {"test": False}
    assert event["account_id"] == "acct_1"
    assert event["type"] == "email.sent"
    assert json.loads(event["payload"]) == {"message_id": "m1", "to": "a@example.com"}
    assert event["idempotency_key"] == "k"
    assert event["created_at"] == now
    delivery = await conn.fetchrow("SELECT * FROM webhooks.deliveries")
    assert delivery is not None
    assert delivery["event_id"] == event_id
    assert delivery["event_created_at"] == now
    assert delivery["event_type"] == "email.sent"
    assert delivery["endpoint_id"] == endpoint_id
    assert delivery["attempts"] == 0
    assert delivery["due_at"] == now
    assert delivery["lease_token"] is None
    assert delivery["created_at"] == now


async def test_exact_and_wildcard_subscribers_each_get_one_delivery(
    conn: asyncpg.Connection,
) -> None:
    """Exact, `email.*` and `*` subscribers get one delivery each; others get none."""
    exact = await sql_endpoint(conn, ["email.sent"])
    prefix = await sql_endpoint(conn, ["email.*"])
    everything = await sql_endpoint(conn, ["*"])
    overlapping = await sql_endpoint(conn, ["email.sent", "email.*", "*"])
    await sql_endpoint(conn, ["contact.*", "email.opened"])  # unsubscribed
    disabled = await sql_endpoint(conn, ["email.sent"])
    await conn.execute("SELECT webhooks.disable_endpoint($1)", disabled)
    deleted = await sql_endpoint(conn, ["*"])
    await conn.execute("SELECT webhooks.delete_endpoint($1)", deleted)
    await sql_endpoint(conn, ["*"], account_id="acct_2")  # another account's
    event_id = await emit(conn)
    assert event_id is not None
    assert await delivered_to(conn, event_id) == {exact, prefix, everything, overlapping}
    assert (await table_counts(conn))["deliveries"] == 4


@pytest.mark.parametrize(
    ("event_types", "subscribed"),
    [
        (["email.sent"], False),
        (["contact.*"], True),
        (["email.*"], False),
        (["contact.updated"], False),
        (["*"], True),
    ],
)
async def test_subscription_matching(
    tx: asyncpg.Connection, event_types: list[str], subscribed: bool
) -> None:
    """A contact.created event reaches only endpoints whose subscriptions match it, and
    webhooks.subscribed (the guard app triggers call first) says so beforehand."""
    await sql_endpoint(tx, event_types)
    assert await tx.fetchval(SUBSCRIBED, "acct_1", "contact.created") is subscribed
    event_id = await emit(tx, "contact.created")
    assert (event_id is not None) is subscribed
    assert await table_counts(tx) == (
        {"events": 1, "deliveries": 1, "keys": 0} if subscribed else NOTHING
    )


async def test_only_unsubscribed_disabled_or_foreign_endpoints_write_nothing(
    conn: asyncpg.Connection,
) -> None:
    """Endpoints that are unsubscribed, disabled or another account's make emit return NULL
    and webhooks.subscribed false."""
    await sql_endpoint(conn, ["email.opened"])
    disabled = await sql_endpoint(conn, ["email.sent"])
    await conn.execute("SELECT webhooks.disable_endpoint($1)", disabled)
    await sql_endpoint(conn, ["email.sent"], account_id="acct_2")
    assert await conn.fetchval(SUBSCRIBED, "acct_1", "email.sent") is False
    assert await emit(conn) is None
    assert await table_counts(conn) == NOTHING


async def test_repeated_idempotency_key_returns_same_event(conn: asyncpg.Connection) -> None:
    """A repeated key for the same account returns the first event's id and writes nothing."""
    await sql_endpoint(conn, ["email.sent"])
    first = await emit(conn, key="send-42")
    counts = await table_counts(conn)
    assert counts == {"events": 1, "deliveries": 1, "keys": 1}
    again = await emit(conn, payload={"different": True}, key="send-42")
    assert again == first
    assert await table_counts(conn) == counts


@pytest.mark.parametrize("over_by", [0, 1])
async def test_a_repeated_key_is_refused_a_payload_over_the_limit(
    conn: asyncpg.Connection, over_by: int
) -> None:
    """A repeat of a key gets the size check its first call gets: over the limit it raises WH003
    (not the first event's id), at the limit it returns the first event and writes nothing."""
    await sql_endpoint(conn, ["email.sent"])
    first = await emit(conn, key="send-42")
    counts = await table_counts(conn)
    payload = json.dumps({"body": "x" * 300})
    size = await conn.fetchval("SELECT octet_length($1::jsonb::text)", payload)
    await conn.execute("UPDATE webhooks.settings SET max_payload_bytes = $1", size - over_by)
    if over_by:
        with pytest.raises(asyncpg.PostgresError) as info:
            await conn.fetchval(EMIT, "acct_1", "email.sent", payload, "send-42")
        assert info.value.sqlstate == "WH003"
        assert info.value.column_name == "payload"
    else:
        assert await conn.fetchval(EMIT, "acct_1", "email.sent", payload, "send-42") == first
    assert await table_counts(conn) == counts


async def test_idempotency_key_is_per_account(conn: asyncpg.Connection) -> None:
    """The same key in another account is a new event."""
    await sql_endpoint(conn, ["email.sent"])
    await sql_endpoint(conn, ["email.sent"], account_id="acct_2")
    first = await emit(conn, key="k")
    second = await emit(conn, key="k", account_id="acct_2")
    assert first is not None
    assert second is not None
    assert first != second
    assert await table_counts(conn) == {"events": 2, "deliveries": 2, "keys": 2}


async def test_without_key_every_call_is_a_new_event(conn: asyncpg.Connection) -> None:
    """Without an idempotency key, identical calls create separate events."""
    await sql_endpoint(conn, ["email.sent"])
    first = await emit(conn)
    second = await emit(conn)
    assert first != second
    assert await table_counts(conn) == {"events": 2, "deliveries": 2, "keys": 0}


@pytest.mark.parametrize("first_commits", [True, False])
async def test_concurrent_idempotent_emits_create_one_event(
    db_url: str, conn: asyncpg.Connection, first_commits: bool
) -> None:
    """A second emit of the same key waits on the first transaction's uncommitted key row: it
    returns the first's event when that commits, and creates its own when that rolls back, so
    there is one event and one delivery either way."""
    first, second = await asyncpg.connect(db_url), await asyncpg.connect(db_url)
    try:
        await sql_endpoint(first, ["email.sent"])
        tx1, tx2 = first.transaction(), second.transaction()
        await tx1.start()
        await tx2.start()
        id1 = await emit(first, key="same")
        pending = asyncio.ensure_future(emit(second, key="same"))
        await wait_for_lock_wait(conn, second.get_server_pid())
        assert not pending.done()
        await (tx1.commit() if first_commits else tx1.rollback())
        id2 = await pending
        await tx2.commit()
        assert id1 is not None
        assert id2 is not None
        assert (id1 == id2) is first_commits
        assert await table_counts(conn) == {"events": 1, "deliveries": 1, "keys": 1}
        assert await conn.fetchval("SELECT id FROM webhooks.events") == id2
    finally:
        await first.close()
        await second.close()


INVALID_EMIT = [
    pytest.param(
        {"account_id": ""}, "WH001", "account_id", "must not be empty", id="empty-account"
    ),
    pytest.param(
        {"account_id": None}, "WH001", "account_id", "must not be empty", id="null-account"
    ),
    pytest.param({"event_type": "email.nope"}, "WH002", "event_type", "unknown", id="unknown-type"),
    pytest.param({"event_type": "email.*"}, "WH002", "event_type", "unknown", id="wildcard-type"),
    pytest.param({"event_type": None}, "WH002", "event_type", "unknown", id="null-type"),
    pytest.param({"payload": [1, 2]}, "WH001", "payload", "JSON object, got array", id="array"),
    pytest.param({"payload": "text"}, "WH001", "payload", "JSON object, got string", id="string"),
    pytest.param({"payload": 42}, "WH001", "payload", "JSON object, got number", id="number"),
    pytest.param({"raw_payload": "null"}, "WH001", "payload", "got null", id="json-null"),
    pytest.param({"raw_payload": None}, "WH001", "payload", "got NULL", id="sql-null"),
    pytest.param({"key": ""}, "WH001", "idempotency_key", "1 to 255", id="empty-key"),
    pytest.param({"key": "k" * 256}, "WH001", "idempotency_key", "1 to 255", id="long-key"),
]


@pytest.mark.parametrize("with_subscriber", [True, False], ids=["subscribed", "no-subscriber"])
@pytest.mark.parametrize(("overrides", "sqlstate", "column", "reason"), INVALID_EMIT)
async def test_emit_refuses_invalid_input(
    tx: asyncpg.Connection,
    overrides: dict[str, Any],
    sqlstate: str,
    column: str,
    reason: str,
    with_subscriber: bool,
) -> None:
    """Invalid input raises a project SQLSTATE naming the field and the reason, writing nothing,
    whether or not an endpoint subscribes: a mistake in an app's trigger shows on its first call."""
    if with_subscriber:
        await sql_endpoint(tx, ["*"])
    args: dict[str, Any] = {
        "account_id": "acct_1",
        "event_type": "email.sent",
        "raw_payload": json.dumps(overrides.get("payload", {"a": 1})),
        "key": None,
    }
    args.update({k: v for k, v in overrides.items() if k != "payload"})
    error = await error_of(
        tx,
        tx.fetchval(EMIT, args["account_id"], args["event_type"], args["raw_payload"], args["key"]),
    )
    assert error.sqlstate == sqlstate
    assert error.column_name == column
    assert error.message.startswith(f"{column}: ")
    assert reason in error.message
    assert await table_counts(tx) == NOTHING


async def test_payload_over_the_limit_is_refused(conn: asyncpg.Connection) -> None:
    """A payload one byte over max_payload_bytes raises WH003; one at the limit is accepted."""
    await sql_endpoint(conn, ["email.sent"])
    payload = json.dumps({"body": "x" * 300})
    size = await conn.fetchval("SELECT octet_length($1::jsonb::text)", payload)
    await conn.execute("UPDATE webhooks.settings SET max_payload_bytes = $1", size - 1)
    with pytest.raises(asyncpg.PostgresError) as info:
        await conn.fetchval(EMIT, "acct_1", "email.sent", payload, None)
    assert info.value.sqlstate == "WH003"
    assert info.value.column_name == "payload"
    assert info.value.message == f"payload: {size} bytes is over the limit of {size - 1} bytes"
    assert await table_counts(conn) == NOTHING
    await conn.execute("UPDATE webhooks.settings SET max_payload_bytes = $1", size)
    assert await conn.fetchval(EMIT, "acct_1", "email.sent", payload, None) is not None


async def test_default_payload_limit_is_256_kib(conn: asyncpg.Connection) -> None:
    """With default settings a payload just over 256 KiB is refused."""
    await sql_endpoint(conn, ["email.sent"])
    assert await conn.fetchval("SELECT max_payload_bytes FROM webhooks.settings") == 262144
    with pytest.raises(asyncpg.PostgresError) as info:
        await emit(conn, payload={"body": "x" * 262144})
    assert info.value.sqlstate == "WH003"
    assert await table_counts(conn) == NOTHING


async def test_unknown_type_is_refused_even_without_subscribers(conn: asyncpg.Connection) -> None:
    """An unknown event type is an error whether or not the account has endpoints."""
    with pytest.raises(asyncpg.PostgresError) as info:
        await emit(conn, "email.nope")
    assert info.value.sqlstate == "WH002"


async def test_error_rolls_back_nothing_half_written(conn: asyncpg.Connection) -> None:
    """When a later emit fails, the caller's rollback takes the earlier emit's rows with it."""
    await sql_endpoint(conn, ["email.sent"])
    tx = conn.transaction()
    await tx.start()
    assert await emit(conn) is not None
    with pytest.raises(asyncpg.PostgresError):
        await emit(conn, payload=[1])
    await tx.rollback()
    assert await table_counts(conn) == NOTHING


# -- the wake-up NOTIFY ---------------------------------------------------------------------------


async def test_settings_change_notifies_and_stamps(db_url: str, conn: asyncpg.Connection) -> None:
    """Updating webhooks.settings bumps updated_at and notifies webhooks_settings."""
    listener = Listener(await asyncpg.connect(db_url), "webhooks_settings")
    try:
        await listener.start()
        before = await conn.fetchval("SELECT updated_at FROM webhooks.settings")
        await conn.execute("UPDATE webhooks.settings SET max_payload_bytes = 1000")
        assert await listener.drain() == [""]
        assert await conn.fetchval("SELECT updated_at FROM webhooks.settings") > before
    finally:
        await listener.conn.close()


@pytest.mark.parametrize(
    ("account_id", "event_type", "sqlstate", "column"),
    [
        pytest.param("", "email.sent", "WH001", "account_id", id="empty-account"),
        pytest.param("a" * 201, "email.sent", "WH001", "account_id", id="long-account"),
        pytest.param(None, "email.sent", "WH001", "account_id", id="null-account"),
        pytest.param("acct_1", "email.nope", "WH002", "event_type", id="unknown-type"),
        pytest.param("acct_1", None, "WH002", "event_type", id="null-type"),
    ],
)
async def test_subscribed_refuses_what_emit_refuses(
    conn: asyncpg.Connection, account_id: str | None, event_type: str | None, sqlstate: str,
    column: str,
) -> None:  # fmt: skip
    """The guard checks its arguments like emit, so a guarded trigger with a typo fails at once."""
    error = await error_of(conn, conn.fetchval(SUBSCRIBED, account_id, event_type))
    assert (error.sqlstate, error.column_name) == (sqlstate, column)
    assert error.message.startswith(f"{column}: ")


async def test_emit_knows_exactly_the_catalogue(conn: asyncpg.Connection) -> None:
    """The built-in list of event types (webhooks.is_event_type, which emit and subscribed use)
    is exactly the rows of webhooks.event_types."""
    source = await conn.fetchval(
        "SELECT prosrc FROM pg_proc WHERE oid = 'webhooks.is_event_type'::regproc"
    )
    listed = re.search(r"ANY \('\{([^}]*)\}'::text\[\]\)", source)
    assert listed is not None, "is_event_type no longer lists a constant; update this test"
    names = sorted(name.strip() for name in listed[1].split(","))
    rows = await conn.fetch("SELECT name FROM webhooks.event_types ORDER BY name")
    assert names == [r["name"] for r in rows]


async def test_emit_opens_no_subtransaction(tx: asyncpg.Connection) -> None:
    """Every row emit writes carries the app transaction's own xid: no subtransaction (an EXCEPTION
    block would open one per call, and hundreds in one app transaction overflow the backend's
    subtransaction cache, which slows every snapshot taken on the server)."""
    await sql_endpoint(tx, ["*"])
    for n in range(3):
        assert await emit(tx, key=f"key-{n}") is not None
    assert await emit(tx, key="key-0") is not None  # the replayed-key path too
    top = await tx.fetchval("SELECT pg_current_xact_id()::xid::text")
    xmins = await tx.fetch(
        """SELECT xmin::text AS x FROM webhooks.idempotency_keys
           UNION SELECT xmin::text FROM webhooks.events
           UNION SELECT xmin::text FROM webhooks.deliveries"""
    )
    assert [r["x"] for r in xmins] == [top]
