"""Account-scoped portal access over real HTTP: minting, confinement to one account, test events,
the catalogue and CORS. Every answer is held to the OpenAPI document (tests/e2e/test_admin_api.py).
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import aiohttp
import asyncpg
import pytest

from engine import verify_signature
from engine.portal_tokens import MAX_TTL, MIN_TTL, mint
from tests.e2e.test_admin_api import HTTP_TIMEOUT, NO_BODY, TOKEN, Api, assert_error
from tests.support.db import intake_drained
from tests.support.engines import RunningEngine, wait_until
from tests.support.receiver import Receiver

StartEngine = Callable[..., Awaitable[RunningEngine]]

KEY = "portal-key-for-tests-0123456789abcdef"
PUBLIC = "https://hooks.example.com/base"
ORIGIN = "https://app.misarmail.example"


@pytest.fixture
async def api(open_policy: None, start_engine: StartEngine) -> Api:
    """An engine with an operator token, a portal key, a public URL and one CORS origin."""
    return Api(
        await start_engine(
            admin_token=TOKEN, portal_key=KEY, public_url=PUBLIC, cors_origins=ORIGIN
        )
    )


async def portal_token(api: Api, account: str, **body: Any) -> dict[str, Any]:
    answer = await api.call("POST", f"/v1/accounts/{account}/portal-access", body or NO_BODY)
    assert answer.status == 201, answer.text
    grant: dict[str, Any] = answer.json
    return grant


async def test_portal_access_mints_a_url_carrying_the_token(api: Api) -> None:
    """201 with the token, the portal URL under WEBHOOKS_PUBLIC_URL (token in the fragment) and
    the expiry the ttl asked for; the token works as a bearer for that account."""
    before = datetime.now(UTC).replace(microsecond=0)
    grant = await portal_token(api, "acct_a", ttl_s=600)
    assert grant["url"] == f"{PUBLIC}/portal#token={grant['token']}"
    expires = datetime.fromisoformat(grant["expires_at"])
    assert before + timedelta(seconds=600) <= expires <= datetime.now(UTC) + timedelta(seconds=600)
    session = await api.ok("GET", "/v1/session", token=grant["token"])
    assert session == {"role": "portal", "account_id": "acct_a", "expires_at": grant["expires_at"]}
    assert (await api.ok("GET", "/v1/session"))["role"] == "operator"


@pytest.mark.parametrize(
    ("ttl_s", "accepted"),
    [
        (int(MIN_TTL.total_seconds()) - 1, False),
        (int(MIN_TTL.total_seconds()), True),
        (int(MAX_TTL.total_seconds()), True),
        (int(MAX_TTL.total_seconds()) + 1, False),
    ],
)
async def test_portal_access_bounds_the_ttl(api: Api, ttl_s: int, accepted: bool) -> None:
    """ttl_s within [MIN_TTL, MAX_TTL] is granted; outside it is a 400 naming ttl_s."""
    answer = await api.call("POST", "/v1/accounts/acct_a/portal-access", {"ttl_s": ttl_s})
    if accepted:
        assert answer.status == 201, answer.text
    else:
        assert_error(answer, 400, "invalid_field", "ttl_s")


async def test_portal_access_without_a_key_names_the_setting(
    open_policy: None, start_engine: StartEngine
) -> None:
    """Without WEBHOOKS_PORTAL_KEY portal-access is a 503 naming it; the rest works as before."""
    api = Api(await start_engine(admin_token=TOKEN))
    answer = await api.call("POST", "/v1/accounts/acct_a/portal-access")
    assert answer.status == 503
    assert answer.json["error"]["code"] == "not_configured"
    assert "WEBHOOKS_PORTAL_KEY" in answer.json["error"]["message"]
    assert (await api.ok("GET", "/v1/endpoints"))["data"] == []
    foreign = mint(KEY, "acct_a", timedelta(hours=1)).token
    assert_error(
        await api.call("GET", "/v1/endpoints", token=foreign), 401, "unauthorized", "Authorization"
    )


async def test_expired_and_tampered_tokens_are_401(api: Api) -> None:
    """An expired portal token is a 401 token_expired; a tampered one or one signed with another
    key a 401 unauthorized."""
    expired = mint(KEY, "acct_a", timedelta(hours=1), datetime.now(UTC) - timedelta(hours=2))
    answer = await api.call("GET", "/v1/endpoints", token=expired.token)
    assert_error(answer, 401, "token_expired", "Authorization")
    good = (await portal_token(api, "acct_a"))["token"]
    head, claims, signature = good.split(".")
    for bad in (
        f"{head}.{claims}.{signature[::-1]}",
        mint("another-key-0123456789abcdef-0123", "acct_a", timedelta(hours=1)).token,
        good[:-1],
    ):
        assert_error(
            await api.call("GET", "/v1/endpoints", token=bad), 401, "unauthorized", "Authorization"
        )
    assert (await api.call("GET", "/v1/endpoints", token=good)).status == 200


async def test_a_portal_token_sees_and_changes_its_account_only(
    api: Api, receiver: Receiver, conn: asyncpg.Connection
) -> None:
    """With a portal token for A: A's endpoints and deliveries are listed and managed; B's ids are
    404 on every route, a list filtered by B is empty, and endpoints are created in A."""
    theirs = await api.create("acct_b", receiver.url("/b"))
    await api.ok(
        "POST", "/v1/events", {"account_id": "acct_b", "type": "email.sent", "payload": {"x": 1}}
    )
    await wait_until(lambda: intake_drained(conn), what="the accepted event fanned out")
    b_delivery = (await api.ok("GET", "/v1/deliveries", query={"account_id": "acct_b"}))["data"][0]
    token = (await portal_token(api, "acct_a"))["token"]

    mine = await api.ok("POST", "/v1/endpoints", {"url": receiver.url("/a")}, token=token)
    assert mine["account_id"] == "acct_a"
    assert mine["secret"].startswith("whsec_")
    assert not mine["secret"].endswith("…")
    named = await api.call(
        "POST", "/v1/endpoints", {"account_id": "acct_b", "url": receiver.url("/a2")}, token=token
    )
    assert_error(named, 403, "forbidden", "account_id")
    same = await api.ok(
        "POST", "/v1/endpoints", {"account_id": "acct_a", "url": receiver.url("/a3")}, token=token
    )
    assert same["account_id"] == "acct_a"

    listed = await api.ok("GET", "/v1/endpoints", token=token)
    assert {e["id"] for e in listed["data"]} == {mine["id"], same["id"]}
    assert (await api.ok("GET", "/v1/endpoints", query={"account_id": "acct_b"}, token=token))[
        "data"
    ] == []
    assert (await api.ok("GET", "/v1/deliveries", query={"account_id": "acct_b"}, token=token))[
        "data"
    ] == []
    assert (
        await api.ok("GET", "/v1/deliveries", query={"endpoint_id": theirs["id"]}, token=token)
    )["data"] == []

    b = theirs["id"]
    for method, path, body in [
        ("GET", f"/v1/endpoints/{b}", None),
        ("GET", f"/v1/endpoints/{b}?reveal_secret=true", None),
        ("PATCH", f"/v1/endpoints/{b}", {"description": "mine now"}),
        ("DELETE", f"/v1/endpoints/{b}", None),
        ("POST", f"/v1/endpoints/{b}/disable", None),
        ("POST", f"/v1/endpoints/{b}/enable", None),
        ("POST", f"/v1/endpoints/{b}/rotate-secret", None),
        ("POST", f"/v1/endpoints/{b}/recover", {"since": "2025-01-01T00:00:00Z"}),
        ("POST", f"/v1/endpoints/{b}/test", {"event_type": "email.sent"}),
        ("GET", f"/v1/deliveries/{b_delivery['delivery_id']}", None),
        ("POST", f"/v1/deliveries/{b_delivery['delivery_id']}/redeliver", None),
    ]:
        path, _, query = path.partition("?")
        answer = await api.call(
            method, path, body if body is not None else NO_BODY, token=token,
            query=dict([query.split("=")]) if query else None,
        )  # fmt: skip
        assert_error(answer, 404, "not_found", "id")
    # B's endpoint is untouched, and its secret never left.
    row = await conn.fetchrow(
        "SELECT description, enabled, deleted_at, previous_secret FROM webhooks.endpoints"
        " WHERE id = $1",
        b,
    )
    assert row is not None
    assert tuple(row) == ("", True, None, None)
    assert await conn.fetchval("SELECT count(*) FROM webhooks.events WHERE test") == 0

    # A's own endpoint: every portal route works on it.
    a = mine["id"]
    assert (
        await api.ok("GET", f"/v1/endpoints/{a}", query={"reveal_secret": "true"}, token=token)
    )["secret"] == mine["secret"]
    await api.ok("PATCH", f"/v1/endpoints/{a}", {"description": "ours"}, token=token)
    rotated = await api.ok(
        "POST", f"/v1/endpoints/{a}/rotate-secret", {"grace_seconds": 0}, token=token
    )
    assert rotated["secret"] != mine["secret"]
    await api.ok("POST", f"/v1/endpoints/{a}/disable", token=token)
    await api.ok("POST", f"/v1/endpoints/{a}/enable", token=token)
    sent = await api.ok(
        "POST", f"/v1/endpoints/{a}/test", {"event_type": "contact.created"}, token=token
    )
    detail = await api.ok("GET", f"/v1/deliveries/{sent['delivery_id']}", token=token)
    assert detail["delivery"]["test"] is True
    await api.ok("POST", f"/v1/deliveries/{sent['delivery_id']}/redeliver", token=token)
    await api.ok(
        "POST", f"/v1/endpoints/{a}/recover", {"since": "2025-01-01T00:00:00Z"}, token=token
    )
    await api.ok("DELETE", f"/v1/endpoints/{same['id']}", token=token)
    # The operator still sees everything.
    everyone = await api.ok("GET", "/v1/endpoints")
    assert {e["account_id"] for e in everyone["data"]} == {"acct_a", "acct_b"}


async def test_operator_only_routes_answer_a_portal_token_403(api: Api) -> None:
    """Emitting, minting portal access and the metrics take the operator token only."""
    token = (await portal_token(api, "acct_a"))["token"]
    for method, path, body in [
        ("POST", "/v1/events", {"account_id": "acct_a", "type": "email.sent", "payload": {}}),
        ("POST", "/v1/accounts/acct_a/portal-access", None),
        ("GET", "/metrics", None),
    ]:
        answer = await api.call(method, path, body if body is not None else NO_BODY, token=token)
        assert_error(answer, 403, "forbidden", "Authorization")


async def test_the_catalogue_over_http(api: Api, conn: asyncpg.Connection) -> None:
    """GET /v1/event-types lists schemas and examples; a customer's token sees no operational
    types, the operator sees them."""
    token = (await portal_token(api, "acct_a"))["token"]
    theirs = {t["name"] for t in (await api.ok("GET", "/v1/event-types", token=token))["data"]}
    everything = (await api.ok("GET", "/v1/event-types"))["data"]
    assert {t["name"] for t in everything} - theirs == {
        "endpoint.disabled", "delivery.failed", "endpoint.recovered",
    }  # fmt: skip
    bounced = next(t for t in everything if t["name"] == "email.bounced")
    assert bounced["example"]["bounce_type"] == "hard"
    assert "bounce_type" in bounced["schema"]["required"]


async def test_a_test_event_arrives_signed_and_marked(api: Api, receiver: Receiver) -> None:
    """A test event reaches the receiver signed with the endpoint's secret, carries the
    catalogue's example and "test": true in its envelope, and is logged as a test."""
    token = (await portal_token(api, "acct_a"))["token"]
    endpoint = await api.ok(
        "POST",
        "/v1/endpoints",
        {"url": receiver.url("/t"), "event_types": ["contact.*"]},
        token=token,
    )
    sent = await api.ok(
        "POST", f"/v1/endpoints/{endpoint['id']}/test", {"event_type": "email.bounced"}, token=token
    )
    (request,) = await receiver.wait_for(1, "/t")
    verify_signature(request.body, request.headers["X-MisarMail-Signature"], endpoint["secret"])
    envelope = json.loads(request.body)
    example = next(
        t["example"]
        for t in (await api.ok("GET", "/v1/event-types"))["data"]
        if t["name"] == "email.bounced"
    )
    assert (envelope["type"], envelope["data"], envelope["test"], envelope["account_id"]) == (
        "email.bounced", example, True, "acct_a",
    )  # fmt: skip
    log = await api.ok("GET", "/v1/deliveries", token=token)
    assert [(d["delivery_id"], d["test"]) for d in log["data"]] == [(sent["delivery_id"], True)]
    # An event the app emits carries no test mark.
    await api.ok(
        "POST",
        "/v1/events",
        {"account_id": "acct_a", "type": "contact.created", "payload": {"contact_id": 1}},
    )
    (_, second) = await receiver.wait_for(2, "/t")
    assert "test" not in json.loads(second.body)


async def test_cors_allows_the_configured_origin_only(api: Api) -> None:
    """A preflight from WEBHOOKS_CORS_ORIGINS is answered 204 with the methods and headers and no
    credentials; another origin gets 403 and no CORS headers; answers, errors included, name the
    allowed origin."""
    base = api.base
    async with aiohttp.ClientSession(timeout=HTTP_TIMEOUT) as session:
        preflight = {"Origin": ORIGIN, "Access-Control-Request-Method": "POST",
                     "Access-Control-Request-Headers": "authorization, content-type"}  # fmt: skip
        async with session.options(f"{base}/v1/endpoints", headers=preflight) as r:
            assert r.status == 204
            assert r.headers["Access-Control-Allow-Origin"] == ORIGIN
            assert "Authorization" in r.headers["Access-Control-Allow-Headers"]
            assert "PATCH" in r.headers["Access-Control-Allow-Methods"]
            assert "Access-Control-Allow-Credentials" not in r.headers
        other = {**preflight, "Origin": "https://evil.example"}
        async with session.options(f"{base}/v1/endpoints", headers=other) as r:
            assert r.status == 403
            assert "Access-Control-Allow-Origin" not in r.headers
        async with session.get(f"{base}/v1/endpoints", headers={"Origin": ORIGIN}) as r:
            assert r.status == 401  # no token: refused, but readable by the allowed page
            assert r.headers["Access-Control-Allow-Origin"] == ORIGIN
        async with session.get(
            f"{base}/v1/endpoints",
            headers={"Origin": "https://evil.example", "Authorization": f"Bearer {TOKEN}"},
        ) as r:
            assert r.status == 200
            assert "Access-Control-Allow-Origin" not in r.headers


async def test_accepted_events_are_counted_for_their_account_until_fanned_out(
    api: Api, receiver: Receiver, conn: asyncpg.Connection, db_url: str
) -> None:
    """While no claim can fan out (another session holds the fan-out's lock, as when no engine
    runs), accepted events have no deliveries: /v1/accepted-events counts them, per account for
    the operator and for its own account only with a portal token (another account's filter
    counts nothing). Once the lock goes they are fanned out and the count is 0 again."""
    await api.create("acct_a", receiver.url("/a"))
    await api.create("acct_b", receiver.url("/b"))
    token = (await portal_token(api, "acct_a"))["token"]
    holder = await asyncpg.connect(db_url)
    try:
        await holder.execute("SELECT pg_advisory_lock(hashtext('webhooks.fan_out'))")
        before = datetime.now(UTC)
        for account in ("acct_a", "acct_a", "acct_b"):
            await conn.execute("SELECT webhooks.emit($1, 'email.sent', '{}')", account)
        every = await api.ok("GET", "/v1/accepted-events")
        assert every["events"] == 3
        assert datetime.fromisoformat(every["oldest_accepted_at"]) >= before - timedelta(seconds=1)
        assert (await api.ok("GET", "/v1/accepted-events", query={"account_id": "acct_b"}))[
            "events"
        ] == 1
        assert (await api.ok("GET", "/v1/accepted-events", token=token))["events"] == 2
        theirs = await api.ok(
            "GET", "/v1/accepted-events", query={"account_id": "acct_b"}, token=token
        )
        assert theirs == {"events": 0, "oldest_accepted_at": None}
        assert await conn.fetchval("SELECT count(*) FROM webhooks.deliveries") == 0
    finally:
        await holder.close()  # its session lock goes with it
    await receiver.wait_for(2, "/a")
    assert await api.ok("GET", "/v1/accepted-events", token=token) == {
        "events": 0,
        "oldest_accepted_at": None,
    }
