"""The per-endpoint policy in SQL (migration 0008): custom headers, the payload filter's checks,
retry schedules and request timeouts, and the lease that must outlast the longest timeout.

Each limit is tried on both sides of its boundary; each refusal must be WH001 naming its field.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any
from uuid import UUID

import asyncpg
import pytest

from engine.models import (
    MAX_HEADER_BYTES,
    MAX_HEADERS,
    RESERVED_HEADER_NAMES,
    RESERVED_HEADER_PREFIXES,
    RESETTABLE,
    TIMEOUT_S_BOUNDS,
)
from tests.support.db import error_of

CREATE = "SELECT id FROM webhooks.create_endpoint('acct_1', 'https://example.com/h', ARRAY['*']"
CLAIM = "SELECT * FROM webhooks.claim_v2('{}'::uuid[], '{}'::integer[], 100, 100)"
RECORD = """
SELECT * FROM webhooks.record_attempts_v1($1::bigint[], $2::uuid[], $3::timestamptz[],
    $4::integer[], $5::integer[], $6::text[], $7::text[], $8::text[], $9::float8[])"""


async def create(conn: asyncpg.Connection, **options: Any) -> UUID:
    """An endpoint created with the given p_<name> arguments."""
    names = "".join(f", p_{k} => ${i + 1}" for i, k in enumerate(options))
    endpoint_id: UUID = await conn.fetchval(f"{CREATE}{names})", *options.values())
    return endpoint_id


async def refused(conn: asyncpg.Connection, field: str, **options: Any) -> str:
    """Creating an endpoint with ``options`` fails with WH001 on ``field``; returns the message."""
    error = await error_of(conn, create(conn, **options))
    assert (error.sqlstate, error.column_name) == ("WH001", field), error
    message = str(error)
    assert message.startswith(f"{field}: "), message
    return message


def headers(**pairs: str) -> str:
    return json.dumps(pairs)


# -- custom headers ------------------------------------------------------------------------------


async def test_headers_are_stored_and_returned_by_the_claim(conn: asyncpg.Connection) -> None:
    """Valid custom headers are kept as given and come with every claimed row of the endpoint."""
    given = {"Authorization": "Bearer abc def", "X-Tenant": "t-1", "X-Empty": ""}
    await create(conn, headers=json.dumps(given))
    await conn.execute("SELECT webhooks.emit('acct_1', 'email.sent', '{}')")
    [row] = await conn.fetch(CLAIM)
    assert json.loads(row["headers"]) == given


RESERVED_EXAMPLES = (
    *(n.title() for n in RESERVED_HEADER_NAMES),
    *(n.upper() for n in RESERVED_HEADER_NAMES),
    "X-MisarMail-Signature",
    "x-misarmail-event",
    "X-MISARMAIL-Anything",
    "webhook-id",
    "Webhook-Signature",
    "WEBHOOK-custom",
)


async def test_reserved_header_names_are_refused_in_any_case(conn: asyncpg.Connection) -> None:
    """A header the engine sets (each reserved name and family, in any case) cannot be custom."""
    assert {p for p in RESERVED_HEADER_PREFIXES} == {"webhook-", "x-misarmail-"}
    for name in RESERVED_EXAMPLES:
        message = await refused(conn, "headers", headers=json.dumps({name: "v"}))
        assert "cannot be overridden" in message, name


async def test_names_next_to_reserved_ones_are_allowed(conn: asyncpg.Connection) -> None:
    """Only the reserved names and prefixes are refused, not names that merely contain them."""
    await create(
        conn,
        headers=headers(
            **{"X-Content-Type": "a", "Hosts": "b", "Webhook": "c", "X-MisarMailer": "d"}
        ),
    )


async def test_invalid_header_names_and_values_are_refused(conn: asyncpg.Connection) -> None:
    """A name that is not an HTTP token is refused; so is a value with CR, LF or another control
    character, outer whitespace or non-ASCII, and the message names the header but never shows the
    value (values are secrets)."""
    for name in ("", "Bad Name", "Colon:", "Ümlaut", "a\r\nb", "(x)"):
        message = await refused(conn, "headers", headers=json.dumps({name: "v"}))
        assert "not a valid HTTP header name" in message, name
    for value in (
        "s3cr3t\r\nInjected: 1",
        "s3cr3t\nb",
        "s3cr3t\rb",
        "s3cr3t\x01",
        " s3cr3t",
        "s3cr3t\t",
        "s3cr3té",
    ):
        message = await refused(conn, "headers", headers=json.dumps({"X-Key": value}))
        assert "X-Key" in message
        assert "s3cr3t" not in message


async def test_header_values_must_be_strings_and_names_unique(conn: asyncpg.Connection) -> None:
    """Values are strings; the same name twice in another case is refused."""
    await refused(conn, "headers", headers='{"X-Num": 1}')
    await refused(conn, "headers", headers='["X-A"]')
    message = await refused(conn, "headers", headers='{"X-A": "1", "x-a": "2"}')
    assert "twice" in message


@pytest.mark.parametrize(("count", "accepted"), [(MAX_HEADERS, True), (MAX_HEADERS + 1, False)])
async def test_at_most_ten_headers(conn: asyncpg.Connection, count: int, accepted: bool) -> None:
    """MAX_HEADERS custom headers are accepted, one more is refused."""
    given = json.dumps({f"X-H{i}": "v" for i in range(count)})
    if accepted:
        await create(conn, headers=given)
    else:
        assert "at most 10" in await refused(conn, "headers", headers=given)


@pytest.mark.parametrize(
    ("total", "accepted"), [(MAX_HEADER_BYTES, True), (MAX_HEADER_BYTES + 1, False)]
)
async def test_at_most_4_kib_of_headers(
    conn: asyncpg.Connection, total: int, accepted: bool
) -> None:
    """Names and values of MAX_HEADER_BYTES in all are accepted, one byte more is refused."""
    given = {"X-A": "a" * 2000, "X-B": "b" * (total - 2000 - 6)}
    assert sum(len(k) + len(v) for k, v in given.items()) == total
    if accepted:
        await create(conn, headers=json.dumps(given))
    else:
        await refused(conn, "headers", headers=json.dumps(given))


async def test_update_replaces_headers_and_reset_removes_them(conn: asyncpg.Connection) -> None:
    """An update's headers replace all of them; p_reset => {headers} removes them; the reads mask
    the values unless the secret is revealed."""
    endpoint_id = await create(conn, headers=headers(**{"X-A": "1", "X-B": "2"}))
    await conn.execute(
        "SELECT webhooks.update_endpoint($1, p_headers => $2)", endpoint_id, headers(**{"X-C": "3"})
    )
    masked = await conn.fetchval("SELECT headers FROM webhooks.get_endpoint_v1($1)", endpoint_id)
    revealed = await conn.fetchval(
        "SELECT headers FROM webhooks.get_endpoint_v1($1, true)", endpoint_id
    )
    assert (json.loads(masked), json.loads(revealed)) == ({"X-C": "***"}, {"X-C": "3"})
    await conn.execute("SELECT webhooks.update_endpoint($1, p_reset => '{headers}')", endpoint_id)
    assert (
        await conn.fetchval("SELECT headers FROM webhooks.endpoints WHERE id = $1", endpoint_id)
        == "{}"
    )


async def test_reset_names_only_policies_and_not_a_new_value(conn: asyncpg.Connection) -> None:
    """p_reset takes every name of RESETTABLE (what the API and the CLI offer), and refuses an
    unknown name, and a policy given a new value in the same call."""
    endpoint_id = await create(conn)
    await conn.execute(
        "SELECT webhooks.update_endpoint($1, p_reset => $2)", endpoint_id, list(RESETTABLE)
    )
    for call in (
        conn.fetchval("SELECT webhooks.update_endpoint($1, p_reset => '{url}')", endpoint_id),
        conn.fetchval(
            "SELECT webhooks.update_endpoint($1, p_timeout_s => 5, p_reset => '{timeout_s}')",
            endpoint_id,
        ),
    ):
        error = await error_of(conn, call)
        assert (error.sqlstate, error.column_name) == ("WH001", "reset")


# -- filter ---------------------------------------------------------------------------------------


async def test_filter_checks(conn: asyncpg.Connection) -> None:
    """A JSON path predicate is kept as the endpoint's filter (as text through parse_filter too);
    text that is no JSON path is refused as WH001 on filter; a path that yields values rather than
    true or false, which would match nothing, is refused too."""
    for path in (
        '$.bounce_type == "hard"',
        "$.campaign_id == 42",
        'exists($.tags[*] ? (@ == "vip")) && $.n > 3',
        "strict $.a == 1",
        '$.email like_regex "@example\\.com$"',
    ):
        endpoint_id = await conn.fetchval(f"{CREATE}, p_filter => webhooks.parse_filter($1))", path)
        stored = await conn.fetchval(
            "SELECT filter FROM webhooks.endpoints WHERE id = $1", endpoint_id
        )
        assert stored == await conn.fetchval("SELECT $1::jsonpath::text", path)
    for path in ("$.bounce_type ==", "$[", "bounce_type = 'hard'", '$ ? (@ like_regex "(")'):
        call = conn.fetchval(f"{CREATE}, p_filter => webhooks.parse_filter($1))", path)
        error = await error_of(conn, call)
        assert (error.sqlstate, error.column_name) == ("WH001", "filter"), path
        assert "is not a valid JSON path" in str(error)
    for path in ("$.bounce_type", "$", '"hard"', "$.tags[*]"):
        assert "not a predicate" in await refused(conn, "filter", filter=path)


async def test_filter_update_and_reset(conn: asyncpg.Connection) -> None:
    """update_endpoint changes the filter and p_reset => {filter} removes it."""
    endpoint_id = await create(conn, filter="$.a == 1")
    await conn.execute("SELECT webhooks.update_endpoint($1, p_filter => '$.a == 2')", endpoint_id)
    assert (
        await conn.fetchval(
            "SELECT filter::text FROM webhooks.endpoints WHERE id = $1", endpoint_id
        )
        == '($."a" == 2)'
    )
    await conn.execute("SELECT webhooks.update_endpoint($1, p_reset => '{filter}')", endpoint_id)
    assert (
        await conn.fetchval("SELECT filter FROM webhooks.endpoints WHERE id = $1", endpoint_id)
        is None
    )


# -- retry schedule ------------------------------------------------------------------------------


async def test_retry_schedule_checks(conn: asyncpg.Connection) -> None:
    """An endpoint's schedule has 0 to 20 delays, none null or negative."""
    await create(conn, retry_schedule=[timedelta(seconds=1)] * 20)
    await create(conn, retry_schedule=[])
    for schedule in (
        [timedelta(seconds=1)] * 21,
        [timedelta(seconds=-1)],
        [timedelta(seconds=1), None],
    ):
        await refused(conn, "retry_schedule", retry_schedule=schedule)


async def _fail_all(conn: asyncpg.Connection) -> tuple[datetime, dict[UUID, asyncpg.Record]]:
    """Claim every due delivery and record a 500 for each; the recording's now() and the
    result by endpoint."""
    rows = await conn.fetch(CLAIM)
    n = len(rows)
    async with conn.transaction():
        now: datetime = await conn.fetchval("SELECT now()")
        result = await conn.fetch(
            RECORD,
            [r["delivery_id"] for r in rows],
            [r["lease_token"] for r in rows],
            [datetime.now(UTC)] * n,
            [3] * n,
            [500] * n,
            ["http_status"] * n,
            ["HTTP 500"] * n,
            [None] * n,
            [None] * n,
        )
    by_delivery = {r["delivery_id"]: r for r in result}
    return now, {r["endpoint_id"]: by_delivery[r["delivery_id"]] for r in rows}


async def test_record_uses_the_endpoints_schedule_else_the_settings(
    conn: asyncpg.Connection,
) -> None:
    """A failure is retried after the endpoint's own delay; an endpoint without a schedule takes
    the settings'; an endpoint with an empty schedule fails at once while the settings retry."""
    await conn.execute("UPDATE webhooks.settings SET retry_schedule = '{1 hour}', retry_jitter = 0")
    own = await create(conn, retry_schedule=[timedelta(seconds=7)])
    inherits = await create(conn)
    none = await create(conn, retry_schedule=[])
    await conn.execute("SELECT webhooks.emit('acct_1', 'email.sent', '{}')")
    now, result = await _fail_all(conn)
    assert (result[own]["outcome"], result[own]["next_attempt_at"]) == (
        "retry",
        now + timedelta(seconds=7),
    )
    assert result[inherits]["next_attempt_at"] == now + timedelta(hours=1)
    assert (result[none]["outcome"], result[none]["next_attempt_at"]) == ("failed", None)


# -- timeout and lease ----------------------------------------------------------------------------


async def test_timeout_bounds(conn: asyncpg.Connection) -> None:
    """An endpoint's timeout_s is 1 to 30 seconds (the default lease allows all of them)."""
    low, high = TIMEOUT_S_BOUNDS
    await create(conn, timeout_s=low)
    await create(conn, timeout_s=high)
    await refused(conn, "timeout_s", timeout_s=low - 1)
    await refused(conn, "timeout_s", timeout_s=high + 1)


async def test_claim_returns_the_timeout_in_force(conn: asyncpg.Connection) -> None:
    """The claim gives each row its endpoint's timeout, or the settings' request_timeout_s."""
    await conn.execute("UPDATE webhooks.settings SET request_timeout_s = 7")
    own = await create(conn, timeout_s=25)
    inherits = await create(conn)
    await conn.execute("SELECT webhooks.emit('acct_1', 'email.sent', '{}')")
    rows = await conn.fetch(CLAIM)
    assert {r["endpoint_id"]: r["timeout_s"] for r in rows} == {own: 25, inherits: 7}


@pytest.mark.parametrize(("lease_s", "accepted"), [(15, False), (16, True)])
async def test_lease_must_exceed_the_default_timeout_plus_margin(
    conn: asyncpg.Connection, lease_s: int, accepted: bool
) -> None:
    """With the default timeout (10 s) and the margin (5 s), a 15 s lease is refused and 16 s is
    accepted; the refusal names both values."""
    call = conn.execute(
        "UPDATE webhooks.settings SET lease_duration = $1", timedelta(seconds=lease_s)
    )
    if accepted:
        await call
        return
    error = await error_of(conn, call)
    assert (error.sqlstate, error.column_name) == ("WH001", "lease_duration")
    assert "lease_duration (00:00:15)" in str(error)
    assert "(10 s) plus a margin of 5 s" in str(error)


async def test_lease_check_follows_the_longest_endpoint_timeout(conn: asyncpg.Connection) -> None:
    """An endpoint's timeout counts: with 20 s, a 25 s lease is refused and 26 s accepted; a
    deleted endpoint no longer counts."""
    endpoint_id = await create(conn, timeout_s=20)
    error = await error_of(
        conn, conn.execute("UPDATE webhooks.settings SET lease_duration = '25 seconds'")
    )
    assert error.column_name == "lease_duration"
    assert "(20 s)" in str(error)
    await conn.execute("UPDATE webhooks.settings SET lease_duration = '26 seconds'")
    await conn.execute("SELECT webhooks.delete_endpoint($1)", endpoint_id)
    await conn.execute("UPDATE webhooks.settings SET lease_duration = '16 seconds'")


@pytest.mark.parametrize(("timeout_s", "accepted"), [(10, True), (11, False)])
async def test_endpoint_timeout_above_what_the_lease_allows_is_refused(
    conn: asyncpg.Connection, timeout_s: int, accepted: bool
) -> None:
    """Under a 16 s lease an endpoint may have a 10 s timeout but not 11 s, on create, on update
    and by a direct UPDATE of the table."""
    await conn.execute("UPDATE webhooks.settings SET lease_duration = '16 seconds'")
    endpoint_id = await create(conn)
    calls = [
        create(conn, timeout_s=timeout_s),
        conn.execute(
            "SELECT webhooks.update_endpoint($1, p_timeout_s => $2)", endpoint_id, timeout_s
        ),
        conn.execute(
            "UPDATE webhooks.endpoints SET timeout_s = $2 WHERE id = $1", endpoint_id, timeout_s
        ),
    ]
    for call in calls:
        if accepted:
            await call
            continue
        error = await error_of(conn, call)
        assert (error.sqlstate, error.column_name) == ("WH001", "timeout_s")
        assert "lease_duration (00:00:16)" in str(error)
        assert f"({timeout_s} s)" in str(error)


@pytest.mark.parametrize(("timeout_s", "accepted"), [(10, True), (11, False)])
async def test_default_timeout_above_what_the_lease_allows_is_refused(
    conn: asyncpg.Connection, timeout_s: int, accepted: bool
) -> None:
    """Raising settings.request_timeout_s past the lease is refused like the lease itself; both
    changed in one UPDATE are checked together."""
    await conn.execute("UPDATE webhooks.settings SET lease_duration = '16 seconds'")
    call = conn.execute("UPDATE webhooks.settings SET request_timeout_s = $1", timeout_s)
    if accepted:
        await call
    else:
        error = await error_of(conn, call)
        assert (error.sqlstate, error.column_name) == ("WH001", "request_timeout_s")
    await conn.execute(
        "UPDATE webhooks.settings SET request_timeout_s = 2, lease_duration = '8 seconds'"
    )
