"""Endpoint management functions against a real Postgres: transitions, validation and SQLSTATEs."""

from __future__ import annotations

import base64
import json
from datetime import timedelta
from typing import Any
from uuid import UUID, uuid4

import asyncpg
import pytest

from tests.support.db import error_of, fan_out

CREATE = """
SELECT id, secret FROM webhooks.create_endpoint(
    p_account_id => $1, p_url => $2, p_event_types => $3::text[], p_description => $4,
    p_secret => $5, p_max_in_flight => $6, p_ordering => $7, p_rate_limit_per_s => $8)
"""

DEFAULTS: dict[str, Any] = {
    "account_id": "acct_1",
    "url": "https://example.com/hook",
    "event_types": ["email.sent"],
    "description": "",
    "secret": None,
    "max_in_flight": None,
    "ordering": None,
    "rate_limit_per_s": None,
}


def make_secret(n_bytes: int = 32) -> str:
    """A well-formed ``whsec_`` secret of ``n_bytes`` bytes (fixed, not random: tests need none)."""
    return "whsec_" + base64.b64encode(bytes(range(n_bytes))).decode()


async def create(conn: asyncpg.Connection, **overrides: Any) -> tuple[UUID, str]:
    """Create an endpoint with DEFAULTS overridden; returns (id, secret)."""
    args = {**DEFAULTS, **overrides}
    row = await conn.fetchrow(
        CREATE,
        args["account_id"],
        args["url"],
        args["event_types"],
        args["description"],
        args["secret"],
        args["max_in_flight"],
        args["ordering"],
        args["rate_limit_per_s"],
    )
    assert row is not None
    return row["id"], row["secret"]


async def emit(conn: asyncpg.Connection, account_id: str = "acct_1") -> int:
    event_id: int | None = await conn.fetchval(
        "SELECT webhooks.emit($1, 'email.sent', $2::jsonb)", account_id, json.dumps({"n": 1})
    )
    assert event_id is not None
    await fan_out(conn)  # its deliveries, as the engine's next claim writes them
    return event_id


async def table_counts(conn: asyncpg.Connection) -> dict[str, int]:
    row = await conn.fetchrow(
        """SELECT (SELECT count(*) FROM webhooks.endpoints)         AS endpoints,
                  (SELECT count(*) FROM webhooks.events)            AS events,
                  (SELECT count(*) FROM webhooks.deliveries)        AS deliveries,
                  (SELECT count(*) FROM webhooks.delivery_outcomes) AS outcomes"""
    )
    assert row is not None
    return dict(row.items())


async def endpoint_row(conn: asyncpg.Connection, endpoint_id: UUID) -> asyncpg.Record:
    row = await conn.fetchrow("SELECT * FROM webhooks.endpoints WHERE id = $1", endpoint_id)
    assert row is not None
    return row


# -- create ---------------------------------------------------------------------------------------


async def test_create_returns_id_and_generated_secret(conn: asyncpg.Connection) -> None:
    """create_endpoint stores the endpoint with defaults and returns a new 32-byte whsec_ secret."""
    endpoint_id, secret = await create(conn, description="orders")
    assert secret.startswith("whsec_")
    assert len(base64.b64decode(secret.removeprefix("whsec_"), validate=True)) == 32
    row = await endpoint_row(conn, endpoint_id)
    assert row["account_id"] == "acct_1"
    assert row["url"] == "https://example.com/hook"
    assert row["event_types"] == ["email.sent"]
    assert row["description"] == "orders"
    assert row["secret"] == secret
    assert row["enabled"] is True
    assert row["max_in_flight"] == 8
    assert row["ordering"] == "dispatch"
    assert row["rate_limit_per_s"] is None
    assert row["deleted_at"] is None


async def test_create_generates_a_different_secret_each_time(conn: asyncpg.Connection) -> None:
    """Two endpoints never share a generated secret."""
    _, first = await create(conn)
    _, second = await create(conn)
    assert first != second


async def test_create_accepts_a_given_secret(conn: asyncpg.Connection) -> None:
    """A well-formed secret moved from another system is stored verbatim."""
    given = make_secret(24)
    endpoint_id, secret = await create(conn, secret=given)
    assert secret == given
    assert (await endpoint_row(conn, endpoint_id))["secret"] == given


async def test_create_normalises_event_types(conn: asyncpg.Connection) -> None:
    """Event types are stored sorted and without duplicates."""
    endpoint_id, _ = await create(
        conn, event_types=["email.opened", "contact.created", "email.opened"]
    )
    row = await endpoint_row(conn, endpoint_id)
    assert row["event_types"] == ["contact.created", "email.opened"]


@pytest.mark.parametrize(
    "event_types", [["email.*"], ["*"], ["contact.*", "email.sent"], ["automation.*"]]
)
async def test_create_accepts_wildcards(tx: asyncpg.Connection, event_types: list[str]) -> None:
    """Known prefixes with `.*` and the catch-all `*` are valid subscriptions."""
    endpoint_id, _ = await create(tx, event_types=event_types)
    assert (await endpoint_row(tx, endpoint_id))["event_types"] == sorted(event_types)


async def test_create_allows_http_only_when_settings_allow_it(conn: asyncpg.Connection) -> None:
    """An http:// URL is refused by default and accepted once settings.allow_http is true."""
    with pytest.raises(asyncpg.PostgresError) as info:
        await create(conn, url="http://example.com/hook")
    assert info.value.sqlstate == "WH001"
    assert info.value.column_name == "url"
    await conn.execute("UPDATE webhooks.settings SET allow_http = true")
    endpoint_id, _ = await create(conn, url="http://example.com/hook")
    assert (await endpoint_row(conn, endpoint_id))["url"] == "http://example.com/hook"


INVALID_CREATE = [
    pytest.param(
        {"account_id": ""}, "WH001", "account_id", "must not be empty", id="empty-account"
    ),
    pytest.param(
        {"account_id": "  "}, "WH001", "account_id", "must not be empty", id="blank-account"
    ),
    pytest.param(
        {"account_id": None}, "WH001", "account_id", "must not be empty", id="null-account"
    ),
    pytest.param({"account_id": "a" * 201}, "WH001", "account_id", "at most", id="long-account"),
    pytest.param({"url": ""}, "WH001", "url", "must not be empty", id="empty-url"),
    pytest.param({"url": "not a url"}, "WH001", "url", "not a valid absolute", id="no-scheme"),
    pytest.param({"url": "https://"}, "WH001", "url", "not a valid absolute", id="no-host"),
    pytest.param({"url": "https://exa mple.com/"}, "WH001", "url", "not a valid", id="space"),
    pytest.param({"url": "https://example.com/\x01"}, "WH001", "url", "not a valid", id="control"),
    pytest.param({"url": "ftp://example.com/"}, "WH001", "url", "scheme", id="ftp"),
    pytest.param({"url": "http://example.com/"}, "WH001", "url", "must use https", id="http"),
    pytest.param({"url": "https://example.com:70000/"}, "WH001", "url", "port", id="port"),
    pytest.param({"url": "https://x.com/" + "a" * 2048}, "WH001", "url", "at most", id="long-url"),
    pytest.param({"event_types": []}, "WH001", "event_types", "at least one", id="no-types"),
    pytest.param({"event_types": None}, "WH001", "event_types", "at least one", id="null-types"),
    pytest.param({"event_types": ["email.nope"]}, "WH002", "event_types", "unknown", id="unknown"),
    pytest.param(
        {"event_types": ["email.sent", "nope"]}, "WH002", "event_types", "unknown", id="one-bad"
    ),
    pytest.param({"event_types": ["foo.*"]}, "WH001", "event_types", "wildcard", id="foo-wild"),
    pytest.param({"event_types": ["%.*"]}, "WH001", "event_types", "wildcard", id="like-percent"),
    pytest.param({"event_types": ["e_ail.*"]}, "WH001", "event_types", "wildcard", id="like-under"),
    pytest.param({"event_types": ["email.sent.*"]}, "WH001", "event_types", "wildcard", id="deep"),
    pytest.param({"secret": "abc"}, "WH001", "secret", "whsec_", id="no-prefix"),
    pytest.param({"secret": "whsec_"}, "WH001", "secret", "whsec_", id="empty-key"),
    pytest.param({"secret": "whsec_!!!!"}, "WH001", "secret", "whsec_", id="not-base64"),
    pytest.param({"secret": "whsec_abc"}, "WH001", "secret", "base64", id="bad-padding"),
    pytest.param({"secret": make_secret(8)}, "WH001", "secret", "24 to 64 bytes", id="short"),
    pytest.param({"secret": make_secret(65)}, "WH001", "secret", "24 to 64 bytes", id="long"),
    pytest.param({"max_in_flight": 0}, "WH001", "max_in_flight", "between 1 and 256", id="mif-0"),
    pytest.param({"max_in_flight": 257}, "WH001", "max_in_flight", "between", id="mif-257"),
    pytest.param({"ordering": "random"}, "WH001", "ordering", "dispatch", id="ordering"),
    pytest.param({"rate_limit_per_s": -1.0}, "WH001", "rate_limit_per_s", "positive", id="rate"),
    pytest.param(
        {"rate_limit_per_s": float("nan")}, "WH001", "rate_limit_per_s", "positive", id="rate-nan"
    ),
    pytest.param({"description": "d" * 1001}, "WH001", "description", "at most", id="description"),
]


@pytest.mark.parametrize(("overrides", "sqlstate", "column", "reason"), INVALID_CREATE)
async def test_create_refuses_invalid_input(
    tx: asyncpg.Connection, overrides: dict[str, Any], sqlstate: str, column: str, reason: str
) -> None:
    """Invalid input raises a project SQLSTATE naming the field and the reason, writing nothing."""
    error = await error_of(tx, create(tx, **overrides))
    assert error.sqlstate == sqlstate
    assert error.column_name == column
    assert error.message.startswith(f"{column}: ")
    assert reason in error.message
    assert (await table_counts(tx))["endpoints"] == 0


# -- update ---------------------------------------------------------------------------------------

UPDATE = """
SELECT * FROM webhooks.update_endpoint(
    $1, p_url => $2, p_event_types => $3::text[], p_description => $4,
    p_max_in_flight => $5, p_ordering => $6, p_rate_limit_per_s => $7)
"""


async def test_update_changes_given_fields_only(conn: asyncpg.Connection) -> None:
    """update_endpoint changes the given fields, leaves NULL ones alone and bumps updated_at."""
    endpoint_id, secret = await create(conn, description="before", rate_limit_per_s=5.0)
    before = await endpoint_row(conn, endpoint_id)
    row = await conn.fetchrow(
        UPDATE, endpoint_id, "https://example.org/new", ["email.*", "contact.created"], None,
        16, "strict", None,
    )  # fmt: skip
    assert row is not None
    after = await endpoint_row(conn, endpoint_id)
    assert dict(row.items()) == dict(after.items())
    assert after["url"] == "https://example.org/new"
    assert after["event_types"] == ["contact.created", "email.*"]
    assert after["max_in_flight"] == 16
    assert after["ordering"] == "strict"
    assert after["description"] == "before"
    assert after["rate_limit_per_s"] == 5.0
    assert after["secret"] == secret
    assert after["updated_at"] > before["updated_at"]


async def test_update_rate_limit_zero_removes_it(conn: asyncpg.Connection) -> None:
    """A rate limit of 0 removes the endpoint's rate limit."""
    endpoint_id, _ = await create(conn, rate_limit_per_s=5.0)
    await conn.fetchrow(UPDATE, endpoint_id, None, None, None, None, None, 0.0)
    assert (await endpoint_row(conn, endpoint_id))["rate_limit_per_s"] is None


@pytest.mark.parametrize(
    ("args", "sqlstate", "column"),
    [
        pytest.param(("ftp://x.com/", None, None, None, None), "WH001", "url", id="url"),
        pytest.param(("http://x.com/", None, None, None, None), "WH001", "url", id="http"),
        pytest.param((None, ["email.nope"], None, None, None), "WH002", "event_types", id="type"),
        pytest.param((None, ["foo.*"], None, None, None), "WH001", "event_types", id="wildcard"),
        pytest.param((None, [], None, None, None), "WH001", "event_types", id="no-types"),
        pytest.param((None, None, "x" * 1001, None, None), "WH001", "description", id="descr"),
        pytest.param((None, None, None, 0, None), "WH001", "max_in_flight", id="mif"),
        pytest.param((None, None, None, None, "lifo"), "WH001", "ordering", id="ordering"),
    ],
)
async def test_update_refuses_invalid_input(
    tx: asyncpg.Connection, args: tuple[Any, ...], sqlstate: str, column: str
) -> None:
    """An invalid update raises a project SQLSTATE for the field and changes nothing."""
    endpoint_id, _ = await create(tx)
    before = await endpoint_row(tx, endpoint_id)
    error = await error_of(tx, tx.fetchrow(UPDATE, endpoint_id, *args, None))
    assert error.sqlstate == sqlstate
    assert error.column_name == column
    assert error.message.startswith(f"{column}: ")
    assert dict((await endpoint_row(tx, endpoint_id)).items()) == dict(before.items())


# -- disable / enable -----------------------------------------------------------------------------


async def test_disable_cancels_live_deliveries(conn: asyncpg.Connection) -> None:
    """Disabling records the reason and ends every live delivery as 'cancelled'."""
    endpoint_id, _ = await create(conn)
    events = [await emit(conn), await emit(conn)]
    row = await conn.fetchrow(
        "SELECT * FROM webhooks.disable_endpoint($1, 'maintenance')", endpoint_id
    )
    assert row is not None
    assert row["enabled"] is False
    assert row["disabled_reason"] == "maintenance"
    assert row["disabled_at"] is not None
    assert await conn.fetchval("SELECT count(*) FROM webhooks.deliveries") == 0
    outcomes = await conn.fetch(
        "SELECT event_id, status, last_error, attempts FROM webhooks.delivery_outcomes ORDER BY 1"
    )
    assert [(o["event_id"], o["status"], o["attempts"]) for o in outcomes] == [
        (events[0], "cancelled", 0),
        (events[1], "cancelled", 0),
    ]
    assert {o["last_error"] for o in outcomes} == {"endpoint disabled: maintenance"}


async def test_disable_twice_is_a_no_op(conn: asyncpg.Connection) -> None:
    """Disabling a disabled endpoint keeps its original reason and time."""
    endpoint_id, _ = await create(conn)
    await conn.execute("SELECT webhooks.disable_endpoint($1, 'first')", endpoint_id)
    first = await endpoint_row(conn, endpoint_id)
    await conn.execute("SELECT webhooks.disable_endpoint($1, 'second')", endpoint_id)
    second = await endpoint_row(conn, endpoint_id)
    assert second["disabled_reason"] == "first"
    assert second["disabled_at"] == first["disabled_at"]


async def test_disable_without_reason_uses_default(conn: asyncpg.Connection) -> None:
    """An empty reason is recorded as 'disabled by operator'."""
    endpoint_id, _ = await create(conn)
    await conn.execute("SELECT webhooks.disable_endpoint($1, '')", endpoint_id)
    assert (await endpoint_row(conn, endpoint_id))["disabled_reason"] == "disabled by operator"


async def test_enable_requeues_what_disable_cancelled(conn: asyncpg.Connection) -> None:
    """Enabling clears the disabled state and creates new deliveries for the cancelled events."""
    endpoint_id, _ = await create(conn)
    events = sorted([await emit(conn), await emit(conn)])
    await conn.execute("SELECT webhooks.disable_endpoint($1)", endpoint_id)
    await conn.execute(
        "UPDATE webhooks.endpoints SET failing_since = now() - interval '1 day' WHERE id = $1",
        endpoint_id,
    )
    row = await conn.fetchrow("SELECT * FROM webhooks.enable_endpoint($1)", endpoint_id)
    assert row is not None
    assert row["enabled"] is True
    assert row["disabled_at"] is None
    assert row["disabled_reason"] is None
    assert row["failing_since"] is None
    live = await conn.fetch(
        "SELECT event_id, endpoint_id, attempts FROM webhooks.deliveries ORDER BY event_id"
    )
    assert [(d["event_id"], d["endpoint_id"], d["attempts"]) for d in live] == [
        (events[0], endpoint_id, 0),
        (events[1], endpoint_id, 0),
    ]
    assert (await table_counts(conn))["outcomes"] == 2


async def test_enable_an_enabled_endpoint_is_a_no_op(conn: asyncpg.Connection) -> None:
    """Enabling an enabled endpoint creates no deliveries, even for earlier cancelled ones."""
    endpoint_id, _ = await create(conn)
    await emit(conn)
    await conn.execute("SELECT webhooks.disable_endpoint($1)", endpoint_id)
    await conn.execute("SELECT webhooks.enable_endpoint($1)", endpoint_id)
    await conn.execute("SELECT webhooks.enable_endpoint($1)", endpoint_id)
    assert (await table_counts(conn))["deliveries"] == 1


async def test_enable_does_not_requeue_older_cancellations(conn: asyncpg.Connection) -> None:
    """Enabling re-queues only what the latest disable cancelled."""
    endpoint_id, _ = await create(conn)
    await emit(conn)
    await conn.execute("SELECT webhooks.disable_endpoint($1)", endpoint_id)
    await conn.execute("SELECT webhooks.enable_endpoint($1)", endpoint_id)
    # The re-queued delivery is delivered; a second pause must not send the event again.
    await conn.execute("DELETE FROM webhooks.deliveries")
    await conn.execute("SELECT webhooks.disable_endpoint($1)", endpoint_id)
    await conn.execute("SELECT webhooks.enable_endpoint($1)", endpoint_id)
    assert (await table_counts(conn))["deliveries"] == 0


# -- delete ---------------------------------------------------------------------------------------

CALLS_ON_ENDPOINT = [
    pytest.param("SELECT webhooks.update_endpoint($1, p_description => 'x')", id="update"),
    pytest.param("SELECT webhooks.disable_endpoint($1)", id="disable"),
    pytest.param("SELECT webhooks.enable_endpoint($1)", id="enable"),
    pytest.param("SELECT webhooks.delete_endpoint($1)", id="delete"),
    pytest.param("SELECT webhooks.rotate_secret($1)", id="rotate"),
    pytest.param("SELECT webhooks.recover($1, now())", id="recover"),
]


@pytest.mark.parametrize("statement", CALLS_ON_ENDPOINT)
async def test_deleted_endpoint_is_unknown_to_every_function(
    tx: asyncpg.Connection, statement: str
) -> None:
    """After delete_endpoint, every endpoint function raises WH004 for it."""
    endpoint_id, _ = await create(tx)
    await tx.execute("SELECT webhooks.delete_endpoint($1)", endpoint_id)
    before = await endpoint_row(tx, endpoint_id)
    error = await error_of(tx, tx.execute(statement, endpoint_id))
    assert error.sqlstate == "WH004"
    assert error.column_name == "endpoint_id"
    assert error.message.startswith("endpoint_id: ")
    assert dict((await endpoint_row(tx, endpoint_id)).items()) == dict(before.items())


@pytest.mark.parametrize("statement", CALLS_ON_ENDPOINT)
async def test_unknown_endpoint_is_refused(tx: asyncpg.Connection, statement: str) -> None:
    """Every endpoint function raises WH004 for an id that never existed."""
    error = await error_of(tx, tx.execute(statement, uuid4()))
    assert error.sqlstate == "WH004"
    assert error.column_name == "endpoint_id"


@pytest.mark.parametrize("statement", CALLS_ON_ENDPOINT)
async def test_null_endpoint_id_is_refused(tx: asyncpg.Connection, statement: str) -> None:
    """Every endpoint function raises WH001 naming endpoint_id for a NULL id."""
    error = await error_of(tx, tx.execute(statement, None))
    assert error.sqlstate == "WH001"
    assert error.column_name == "endpoint_id"


async def test_delete_cancels_deliveries_and_hides_the_endpoint(conn: asyncpg.Connection) -> None:
    """Deleting keeps the row for the log, cancels live deliveries and stops emit and redeliver."""
    endpoint_id, _ = await create(conn)
    await emit(conn)
    delivery_id = await conn.fetchval("SELECT id FROM webhooks.deliveries")
    await conn.execute("SELECT webhooks.delete_endpoint($1)", endpoint_id)
    row = await endpoint_row(conn, endpoint_id)
    assert row["deleted_at"] is not None
    assert row["enabled"] is False
    assert row["disabled_reason"] == "deleted"
    outcome = await conn.fetchrow("SELECT status, last_error FROM webhooks.delivery_outcomes")
    assert outcome is not None
    assert (outcome["status"], outcome["last_error"]) == ("cancelled", "endpoint deleted")
    log = await conn.fetchrow("SELECT endpoint_url, status FROM webhooks.delivery_log")
    assert log is not None
    assert (log["endpoint_url"], log["status"]) == ("https://example.com/hook", "cancelled")
    assert await conn.fetchval("SELECT webhooks.emit('acct_1', 'email.sent', '{}')") is None
    with pytest.raises(asyncpg.PostgresError) as info:
        await conn.execute("SELECT webhooks.redeliver($1)", delivery_id)
    assert info.value.sqlstate == "WH004"
    assert (await table_counts(conn))["deliveries"] == 0


# -- rotate_secret --------------------------------------------------------------------------------


async def secrets_now(conn: asyncpg.Connection, endpoint_id: UUID) -> list[str]:
    secrets: list[str] = await conn.fetchval(
        "SELECT webhooks.signing_secrets(e) FROM webhooks.endpoints e WHERE e.id = $1", endpoint_id
    )
    return secrets


async def test_rotate_keeps_old_secret_for_the_grace_period(conn: asyncpg.Connection) -> None:
    """rotate_secret returns a new secret and keeps the old one valid until now() + grace."""
    endpoint_id, old = await create(conn)
    async with conn.transaction():
        new = await conn.fetchval(
            "SELECT webhooks.rotate_secret($1, interval '2 hours')", endpoint_id
        )
        now = await conn.fetchval("SELECT now()")
    assert new != old
    assert new.startswith("whsec_")
    row = await endpoint_row(conn, endpoint_id)
    assert row["secret"] == new
    assert row["previous_secret"] == old
    assert row["previous_secret_expires_at"] - now == timedelta(hours=2)
    assert await secrets_now(conn, endpoint_id) == [new, old]


async def test_rotate_previous_secret_stops_signing_after_expiry(conn: asyncpg.Connection) -> None:
    """Once the grace period has passed, only the current secret signs."""
    endpoint_id, _ = await create(conn)
    new = await conn.fetchval("SELECT webhooks.rotate_secret($1, interval '1 hour')", endpoint_id)
    await conn.execute(
        "UPDATE webhooks.endpoints SET previous_secret_expires_at = now() - interval '1 second'"
    )
    assert await secrets_now(conn, endpoint_id) == [new]


async def test_rotate_without_grace_drops_old_secret(conn: asyncpg.Connection) -> None:
    """A zero grace period invalidates the old secret at once."""
    endpoint_id, _ = await create(conn)
    new = await conn.fetchval("SELECT webhooks.rotate_secret($1, interval '0')", endpoint_id)
    row = await endpoint_row(conn, endpoint_id)
    assert row["previous_secret"] is None
    assert row["previous_secret_expires_at"] is None
    assert await secrets_now(conn, endpoint_id) == [new]


async def test_rotate_accepts_a_given_secret(conn: asyncpg.Connection) -> None:
    """A well-formed new secret given by the caller becomes the current one."""
    endpoint_id, _ = await create(conn)
    given = make_secret(48)
    returned = await conn.fetchval(
        "SELECT webhooks.rotate_secret($1, interval '1 hour', $2)", endpoint_id, given
    )
    assert returned == given
    assert (await endpoint_row(conn, endpoint_id))["secret"] == given


@pytest.mark.parametrize(
    ("grace", "new_secret", "column"),
    [
        pytest.param("-1 hour", None, "grace", id="negative-grace"),
        pytest.param("31 days", None, "grace", id="long-grace"),
        pytest.param(None, None, "grace", id="null-grace"),
        pytest.param("1 hour", "whsec_short", "secret", id="malformed"),
        pytest.param("1 hour", "CURRENT", "secret", id="same-as-current"),
    ],
)
async def test_rotate_refuses_invalid_input(
    tx: asyncpg.Connection, grace: str | None, new_secret: str | None, column: str
) -> None:
    """An invalid rotation raises WH001 for the field and keeps the current secret."""
    endpoint_id, secret = await create(tx)
    before = await endpoint_row(tx, endpoint_id)
    given = secret if new_secret == "CURRENT" else new_secret  # noqa: S105 (a marker, no secret)
    error = await error_of(
        tx,
        tx.execute(
            "SELECT webhooks.rotate_secret($1, $2::text::interval, $3)", endpoint_id, grace, given
        ),
    )
    assert error.sqlstate == "WH001"
    assert error.column_name == column
    assert error.message.startswith(f"{column}: ")
    assert dict((await endpoint_row(tx, endpoint_id)).items()) == dict(before.items())
