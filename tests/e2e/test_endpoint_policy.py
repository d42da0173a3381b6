"""The per-endpoint policy end to end: custom headers reach the receiver, each endpoint's timeout
and retry schedule are the ones its attempts get, the admin API carries the policy (values masked),
and an engine refuses to start on a lease that would let no attempt start.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from datetime import timedelta

import asyncpg
import pytest

from engine.errors import ConfigError
from tests.e2e.test_admin_api import TOKEN, Api, assert_error
from tests.e2e.test_cli import assert_error as cli_error
from tests.e2e.test_cli import cli
from tests.e2e.test_cli import ok as cli_ok
from tests.support.engines import RunningEngine, create_endpoint, wait_until
from tests.support.receiver import Receiver, Reply

StartEngine = Callable[..., Awaitable[RunningEngine]]

# A receiver that answers after SLOW_S: slower than the short timeout, faster than the long one.
SHORT_TIMEOUT_S, SLOW_S, LONG_TIMEOUT_S = 1, 2.0, 3


async def _count(conn: asyncpg.Connection, sql: str, *args: object) -> int:
    value: int = await conn.fetchval(sql, *args)
    return value


async def test_custom_headers_arrive_with_every_attempt(
    conn: asyncpg.Connection, receiver: Receiver, open_policy: None, start_engine: StartEngine
) -> None:
    """Each attempt, the retry too, carries the endpoint's custom headers beside ours."""
    receiver.script("/hook", Reply(status=500), Reply(status=200))
    custom = {"Authorization": "Bearer tok-123", "X-Tenant": "acme"}
    await create_endpoint(conn, receiver.url("/hook"), headers=json.dumps(custom))
    await create_endpoint(conn, receiver.url("/plain"))
    await start_engine()
    await conn.execute("SELECT webhooks.emit('acct_1', 'email.sent', '{}')")
    first, second = await receiver.wait_for(2, "/hook")
    for request in (first, second):
        assert {k: request.headers[k] for k in custom} == custom
        assert request.headers["Content-Type"] == "application/json"
        assert "X-MisarMail-Signature" in request.headers
    (plain,) = await receiver.wait_for(1, "/plain")
    assert "X-Tenant" not in plain.headers


async def test_each_endpoint_gets_its_own_timeout(
    conn: asyncpg.Connection, receiver: Receiver, open_policy: None, start_engine: StartEngine
) -> None:
    """A receiver slower than one endpoint's timeout and faster than another's: the first
    attempt times out after its endpoint's timeout, the second is answered."""
    receiver.script("/slow", Reply(delay_s=SLOW_S))
    short, _ = await create_endpoint(
        conn, receiver.url("/slow"), types=("email.sent",), timeout_s=SHORT_TIMEOUT_S
    )
    long, _ = await create_endpoint(
        conn, receiver.url("/slow"), types=("email.sent",), timeout_s=LONG_TIMEOUT_S
    )
    await conn.execute("UPDATE webhooks.settings SET retry_schedule = '{1 hour}'")
    await start_engine(request_timeout_s=None, shutdown_grace_s=LONG_TIMEOUT_S + 1)
    await conn.execute("SELECT webhooks.emit('acct_1', 'email.sent', '{}')")
    await wait_until(lambda: _two(conn), timeout_s=30, what="both attempts recorded")
    rows = {
        r["endpoint_id"]: r
        for r in await conn.fetch(
            "SELECT endpoint_id, status_code, error_kind, duration_ms FROM webhooks.attempts"
        )
    }
    assert (rows[short]["status_code"], rows[short]["error_kind"]) == (0, "timeout")
    assert SHORT_TIMEOUT_S * 1000 - 50 <= rows[short]["duration_ms"] < SLOW_S * 1000
    assert (rows[long]["status_code"], rows[long]["error_kind"]) == (200, None)
    assert rows[long]["duration_ms"] >= SLOW_S * 1000 - 50


async def _two(conn: asyncpg.Connection) -> bool:
    return await _count(conn, "SELECT count(*) FROM webhooks.attempts") >= 2


async def test_each_endpoint_gets_its_own_retry_schedule(
    conn: asyncpg.Connection, receiver: Receiver, open_policy: None, start_engine: StartEngine
) -> None:
    """After a failure, an endpoint with a one-second schedule is retried and delivered while
    one on the settings' hour-long schedule waits for its retry."""
    receiver.script("/own", Reply(status=500), Reply(status=200))
    receiver.script("/settings", Reply(status=500), Reply(status=200))
    await conn.execute("UPDATE webhooks.settings SET retry_schedule = '{1 hour}'")
    own, _ = await create_endpoint(
        conn, receiver.url("/own"), retry_schedule=[timedelta(seconds=1)]
    )
    inherits, _ = await create_endpoint(conn, receiver.url("/settings"))
    await start_engine()
    await conn.execute("SELECT webhooks.emit('acct_1', 'email.sent', '{}')")
    await receiver.wait_for(2, "/own", timeout_s=20)
    await wait_until(
        lambda: _status(conn, own, "delivered"), what="the own-schedule endpoint's delivery"
    )
    await wait_until(
        lambda: _status(conn, inherits, "retrying"), what="the settings-schedule endpoint's retry"
    )
    waiting = await conn.fetchval(
        "SELECT next_attempt_at - started_at FROM webhooks.attempts WHERE endpoint_id = $1",
        inherits,
    )
    assert waiting > timedelta(minutes=59)
    assert len(receiver.received_on("/settings")) == 1


async def _status(conn: asyncpg.Connection, endpoint_id: object, status: str) -> bool:
    found = await conn.fetchval(
        "SELECT status FROM webhooks.delivery_log WHERE endpoint_id = $1", endpoint_id
    )
    return bool(found == status)


@pytest.mark.parametrize(("lease_s", "starts"), [(15, False), (16, True)])
async def test_engine_refuses_to_start_on_a_lease_that_would_stall(
    conn: asyncpg.Connection, start_engine: StartEngine, lease_s: int, starts: bool
) -> None:
    """A database left with a lease no longer than the longest timeout (10 s) plus the margin
    (5 s), as SQL now refuses to set it, stops the engine at start with both values named; one
    second more starts."""
    await conn.execute("ALTER TABLE webhooks.settings DISABLE TRIGGER settings_checked")
    await conn.execute(
        "UPDATE webhooks.settings SET lease_duration = $1", timedelta(seconds=lease_s)
    )
    await conn.execute("ALTER TABLE webhooks.settings ENABLE TRIGGER settings_checked")
    if starts:
        running = await start_engine()
        assert running.engine.policy is not None
        return
    with pytest.raises(ConfigError) as caught:
        await start_engine()
    assert caught.value.field == "lease_duration"
    assert "lease_duration (15 s)" in str(caught.value)
    assert "(10 s) plus a margin of 5 s" in str(caught.value)


async def test_admin_api_carries_the_policy(
    receiver: Receiver, open_policy: None, start_engine: StartEngine
) -> None:
    """Create and update carry headers, filter, schedule and timeout; header values are shown
    only in create's answer and with reveal_secret; reserved names and bad paths are 400s naming
    the field; null puts a policy back to its default."""
    api = Api(await start_engine(admin_token=TOKEN))
    created = await api.create(
        "acct_1",
        receiver.url("/hook"),
        headers={"Authorization": "Bearer s3cr3t"},
        filter='$.bounce_type == "hard"',
        retry_schedule=[1, 60],
        timeout_s=5,
    )
    assert created["headers"] == {"Authorization": "Bearer s3cr3t"}
    assert (created["retry_schedule"], created["timeout_s"]) == ([1.0, 60.0], 5)
    path = f"/v1/endpoints/{created['id']}"
    shown = await api.ok("GET", path)
    assert shown["headers"] == {"Authorization": "***"}
    assert shown["filter"] == '($."bounce_type" == "hard")'
    revealed = await api.ok("GET", path, query={"reveal_secret": "true"})
    assert revealed["headers"] == {"Authorization": "Bearer s3cr3t"}
    for name in ("X-MisarMail-Event", "webhook-id", "content-type", "Host", "User-Agent"):
        answer = await api.call("PATCH", path, {"headers": {name: "x"}})
        assert_error(answer, 400, "invalid_field", "headers")
    answer = await api.call("PATCH", path, {"filter": "$.bounce_type =="})
    assert_error(answer, 400, "invalid_field", "filter")
    answer = await api.call("PATCH", path, {"timeout_s": 31})
    assert_error(answer, 400, "invalid_field", "timeout_s")
    updated = await api.ok(
        "PATCH", path, {"headers": None, "filter": None, "retry_schedule": None, "timeout_s": 7}
    )
    assert (updated["headers"], updated["filter"], updated["retry_schedule"]) == ({}, None, None)
    assert updated["timeout_s"] == 7


async def test_a_filter_delivers_exactly_the_matching_events(
    conn: asyncpg.Connection, receiver: Receiver, open_policy: None, start_engine: StartEngine
) -> None:
    """An endpoint filtering on hard bounces receives exactly those; one without a filter, all."""
    await create_endpoint(conn, receiver.url("/hard"), filter='$.bounce_type == "hard"')
    await create_endpoint(conn, receiver.url("/all"))
    await start_engine()
    kinds = ["hard", "soft", "hard", None, "HARD"]
    for kind in kinds:
        payload = {"bounce_type": kind} if kind is not None else {}
        await conn.execute(
            "SELECT webhooks.emit('acct_1', 'email.bounced', $1::jsonb)", json.dumps(payload)
        )
    everything = await receiver.wait_for(len(kinds), "/all")
    await wait_until(
        lambda: _count_le(conn, "SELECT count(*) FROM webhooks.deliveries", 0),
        what="every delivery done",
    )
    hard = [json.loads(r.body)["data"] for r in receiver.received_on("/hard")]
    assert hard == [{"bounce_type": "hard"}] * 2
    assert len(everything) == len(kinds)


async def _count_le(conn: asyncpg.Connection, sql: str, most: int) -> bool:
    return await _count(conn, sql) <= most


async def test_cli_sets_the_policy_and_masks_header_values(db_url: str) -> None:
    """The CLI sets headers, filter, schedule and timeout; a header value is printed only by add
    and show --reveal-secret; --reset puts policies back; a reserved name is one error line."""
    add = await cli_ok(
        db_url, "endpoints", "add", "https://example.com/hook", "--account", "acct_1",
        "--header", "X-Api-Key: s3cr3t-value", "--filter", '$.bounce_type == "hard"',
        "--retry-schedule", "1m,1h", "--timeout", "20",
    )  # fmt: skip
    endpoint_id = add.out.splitlines()[0].removeprefix("created endpoint ")
    assert "X-Api-Key: s3cr3t-value" in add.out
    shown = await cli_ok(db_url, "endpoints", "show", endpoint_id)
    assert "X-Api-Key: ***" in shown.out
    assert '($."bounce_type" == "hard")' in shown.out
    assert "60s, 3600s" in shown.out
    assert "20 s" in shown.out
    shown_json = (await cli_ok(db_url, "endpoints", "show", endpoint_id, "--json")).json()
    assert shown_json["headers"] == {"X-Api-Key": "***"}
    assert "s3cr3t-value" not in shown.out + shown.err
    revealed = await cli_ok(db_url, "endpoints", "show", endpoint_id, "--reveal-secret", "--json")
    assert revealed.json()["headers"] == {"X-Api-Key": "s3cr3t-value"}

    updated = await cli_ok(
        db_url, "endpoints", "update", endpoint_id, "--reset", "filter", "--reset", "timeout_s",
        "--json",
    )  # fmt: skip
    assert (updated.json()["filter"], updated.json()["timeout_s"]) == (None, None)
    refused = await cli(db_url, "endpoints", "update", endpoint_id, "--header", "Content-Type: x")
    cli_error(refused, 2, "headers:", "cannot be overridden")
