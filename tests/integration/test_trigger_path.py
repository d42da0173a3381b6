"""The trigger path as MisarMail uses it: an app table with an AFTER INSERT trigger calling emit.

The event is written in the app's own transaction, so it exists exactly when the app's row does.
"""

from __future__ import annotations

import json

import asyncpg
import pytest

from tests.support.db import fan_out, sql_endpoint

APP_SCHEMA = """
CREATE TABLE email_events (
    id         bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    account_id text NOT NULL,
    kind       text NOT NULL,
    payload    jsonb NOT NULL
);

CREATE FUNCTION email_events_webhook() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM webhooks.emit(NEW.account_id, NEW.kind, NEW.payload, 'email_events:' || NEW.id);
    RETURN NULL;
END $$;

CREATE TRIGGER email_events_webhook AFTER INSERT ON email_events
    FOR EACH ROW EXECUTE FUNCTION email_events_webhook();
"""

INSERT = "INSERT INTO email_events (account_id, kind, payload) VALUES ($1, $2, $3::jsonb)"


@pytest.fixture
async def app(conn: asyncpg.Connection) -> asyncpg.Connection:
    """The test database with MisarMail's sample table and trigger, on the app's connection."""
    await conn.execute(APP_SCHEMA)
    return conn


async def counts(conn: asyncpg.Connection) -> tuple[int, int, int]:
    """App rows, events and deliveries, once the intake is fanned out (inside the transaction, if
    one is open: the fan-out then rolls back with it)."""
    await fan_out(conn)
    row = await conn.fetchrow(
        """SELECT (SELECT count(*) FROM email_events)        AS app_rows,
                  (SELECT count(*) FROM webhooks.events)     AS events,
                  (SELECT count(*) FROM webhooks.deliveries) AS deliveries"""
    )
    assert row is not None
    return row["app_rows"], row["events"], row["deliveries"]


def payload(message_id: str) -> str:
    return json.dumps({"message_id": message_id, "to": "reader@example.com"})


async def test_rolled_back_app_transaction_creates_nothing(app: asyncpg.Connection) -> None:
    """When the app's transaction rolls back, neither the event nor any delivery exists."""
    await sql_endpoint(app, ["email.sent"])
    tx = app.transaction()
    await tx.start()
    await app.execute(INSERT, "acct_1", "email.sent", payload("m1"))
    assert await counts(app) == (1, 1, 1)
    await tx.rollback()
    assert await counts(app) == (0, 0, 0)


async def test_committed_app_transaction_creates_one_delivery_per_subscriber(
    app: asyncpg.Connection,
) -> None:
    """A committed insert creates one event and one delivery per subscribed endpoint, no others."""
    exact = await sql_endpoint(app, ["email.sent"])
    wildcard = await sql_endpoint(app, ["email.*"])
    everything = await sql_endpoint(app, ["*"])
    await sql_endpoint(app, ["email.opened", "contact.*"])  # unsubscribed
    disabled = await sql_endpoint(app, ["email.sent"])
    await app.execute("SELECT webhooks.disable_endpoint($1)", disabled)
    await sql_endpoint(app, ["*"], account_id="acct_2")  # another account's
    async with app.transaction():
        await app.execute(INSERT, "acct_1", "email.sent", payload("m1"))
    assert await counts(app) == (1, 1, 3)
    event = await app.fetchrow("SELECT * FROM webhooks.events")
    assert event is not None
    assert (event["account_id"], event["type"]) == ("acct_1", "email.sent")
    assert json.loads(event["payload"]) == json.loads(payload("m1"))
    rows = await app.fetch("SELECT endpoint_id, event_id FROM webhooks.deliveries")
    assert {r["endpoint_id"] for r in rows} == {exact, wildcard, everything}
    assert {r["event_id"] for r in rows} == {event["id"]}


async def test_each_app_row_is_its_own_event(app: asyncpg.Connection) -> None:
    """A multi-row insert creates one event per row, each routed by its own account and kind."""
    sent = await sql_endpoint(app, ["email.sent"])
    bounced = await sql_endpoint(app, ["email.bounced"], account_id="acct_2")
    await app.execute(
        """INSERT INTO email_events (account_id, kind, payload) VALUES
               ('acct_1', 'email.sent',    '{"n": 1}'),
               ('acct_1', 'email.bounced', '{"n": 2, "bounce_type": "hard"}'),
               ('acct_2', 'email.bounced', '{"n": 3, "bounce_type": "soft"}'),
               ('acct_3', 'email.sent',    '{"n": 4}')"""
    )
    assert await counts(app) == (4, 2, 2)
    rows = await app.fetch(
        """SELECT d.endpoint_id, e.payload->>'n' AS n FROM webhooks.deliveries d
             JOIN webhooks.events e ON e.id = d.event_id ORDER BY n"""
    )
    assert [(r["endpoint_id"], r["n"]) for r in rows] == [(sent, "1"), (bounced, "3")]


async def test_account_without_endpoints_writes_only_the_app_row(app: asyncpg.Connection) -> None:
    """For an account with no endpoint the app's insert succeeds and no webhook row is written."""
    await sql_endpoint(app, ["*"], account_id="acct_2")
    await app.execute(INSERT, "acct_1", "email.sent", payload("m1"))
    assert await counts(app) == (1, 0, 0)


async def test_rolled_back_savepoint_drops_only_its_events(app: asyncpg.Connection) -> None:
    """Rows rolled back to a savepoint take their events with them; the rest commit."""
    await sql_endpoint(app, ["email.*"])
    async with app.transaction():
        await app.execute(INSERT, "acct_1", "email.sent", payload("kept"))
        savepoint = app.transaction()
        await savepoint.start()
        await app.execute(INSERT, "acct_1", "email.opened", payload("dropped"))
        await savepoint.rollback()
    assert await counts(app) == (1, 1, 1)
    assert await app.fetchval("SELECT payload->>'message_id' FROM webhooks.events") == "kept"


async def test_invalid_event_fails_the_app_insert(app: asyncpg.Connection) -> None:
    """An unknown kind makes emit raise WH002: the app's insert fails, nothing is half-written."""
    await sql_endpoint(app, ["*"])
    tx = app.transaction()
    await tx.start()
    await app.execute(INSERT, "acct_1", "email.sent", payload("m1"))
    with pytest.raises(asyncpg.PostgresError) as info:
        await app.execute(INSERT, "acct_1", "email.teleported", payload("m2"))
    await tx.rollback()
    assert info.value.sqlstate == "WH002"
    assert info.value.column_name == "event_type"
    assert await counts(app) == (0, 0, 0)


async def test_notify_is_sent_at_commit_only(db_url: str, app: asyncpg.Connection) -> None:
    """The engine's wake-up arrives when the app commits, not before, and never after a rollback."""
    received: list[str] = []
    listener = await asyncpg.connect(db_url)
    try:
        await listener.add_listener("webhooks_wakeup", lambda *args: received.append(args[3]))
        await sql_endpoint(app, ["email.sent"])
        await app.execute("SELECT webhooks.set_engine_waiting_v1(true)")  # an engine asleep
        tx = app.transaction()
        await tx.start()
        await app.execute(INSERT, "acct_1", "email.sent", payload("m1"))
        await listener.fetchval("SELECT 1")
        assert received == []
        await tx.commit()
        await listener.fetchval("SELECT 1")
        assert received == [""]
        tx = app.transaction()
        await tx.start()
        await app.execute(INSERT, "acct_1", "email.sent", payload("m2"))
        await tx.rollback()
        await listener.fetchval("SELECT 1")
        assert received == [""]
    finally:
        await listener.close()
