"""The read side of the Store on a real Postgres: endpoints, the delivery log, attempts, paging.

The log is built with the engine's own calls (tests/support/factories.py), and every page is
checked against ``webhooks.delivery_log`` itself, the view operators query.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import TypeVar
from uuid import UUID, uuid4

import asyncpg
import pytest

from engine.db.read_models import DeliveryStatus, DeliveryView, EndpointView, Page
from engine.db.store import Store
from engine.errors import InvalidInput, UnknownDelivery, UnknownEndpoint
from engine.models import EndpointOptions, Ordering
from tests.support import factories

T = TypeVar("T")


async def all_pages(fetch: Callable[[str | None], Awaitable[Page[T]]]) -> list[list[T]]:
    """Follow next_cursor from the first page to the last."""
    pages: list[list[T]] = []
    cursor: str | None = None
    while True:
        page = await fetch(cursor)
        pages.append(list(page.items))
        if page.next_cursor is None:
            return pages
        cursor = page.next_cursor


async def add_endpoint(store: Store, account_id: str = "acct_1", types: str = "*") -> UUID:
    endpoint_id, _ = await store.create_endpoint(
        account_id, "https://example.com/hook", EndpointOptions(event_types=(types,))
    )
    return endpoint_id


@pytest.fixture
async def log(store: Store, conn: asyncpg.Connection) -> factories.MixedLog:
    """Ten deliveries in every status (see factories.mixed_log)."""
    return await factories.mixed_log(store, conn)


async def log_rows(conn: asyncpg.Connection, where: str = "true") -> list[tuple[int, str]]:
    rows = await conn.fetch(
        f"SELECT delivery_id, status FROM webhooks.delivery_log WHERE {where}"
        " ORDER BY created_at DESC, delivery_id DESC"
    )
    return [(r["delivery_id"], r["status"]) for r in rows]


def pairs(items: list[DeliveryView]) -> list[tuple[int, str]]:
    return [(d.delivery_id, d.status.value) for d in items]


# -- endpoints ------------------------------------------------------------------------------------


async def test_endpoints_page_oldest_first_without_gaps(
    store: Store, conn: asyncpg.Connection
) -> None:
    """Pages of 3 over 8 endpoints (some sharing created_at) give each live one once, in order."""
    created = [await add_endpoint(store) for _ in range(3)]
    async with conn.transaction():
        created += [
            await conn.fetchval(
                "SELECT id FROM webhooks.create_endpoint('acct_2', 'https://example.com/t', '{*}')"
            )
            for _ in range(4)
        ]
    deleted = await add_endpoint(store)
    await store.delete_endpoint(deleted)

    pages = await all_pages(lambda cursor: store.list_endpoints(limit=3, cursor=cursor))

    assert [len(p) for p in pages] == [3, 3, 1]
    expected = await conn.fetch(
        "SELECT id FROM webhooks.endpoints WHERE deleted_at IS NULL ORDER BY created_at, id"
    )
    assert [e.id for p in pages for e in p] == [r["id"] for r in expected]
    assert sorted(r["id"] for r in expected) == sorted(created)


async def test_endpoints_filter_by_account_and_state(store: Store) -> None:
    """account_id and enabled narrow the list; both together intersect."""
    one, two = await add_endpoint(store, "acct_1"), await add_endpoint(store, "acct_1")
    other = await add_endpoint(store, "acct_2")
    await store.disable_endpoint(two)

    async def ids(**filters: object) -> list[UUID]:
        page = await store.list_endpoints(**filters)  # type: ignore[arg-type]
        return [e.id for e in page.items]

    assert await ids(account_id="acct_1") == [one, two]
    assert await ids(enabled=True) == [one, other]
    assert await ids(enabled=False) == [two]
    assert await ids(account_id="acct_2", enabled=False) == []
    assert await ids(account_id="nobody") == []


async def test_endpoint_secrets_are_masked_unless_revealed(store: Store) -> None:
    """Views show 'whsec_' and 4 characters; reveal_secret gives the secret and the previous one."""
    endpoint_id, secret = await store.create_endpoint("acct_1", "https://example.com/h")
    new_secret = await store.rotate_secret(endpoint_id, timedelta(hours=1))

    masked = await store.get_endpoint(endpoint_id)
    assert masked.secret == new_secret[:10] + "…"
    assert masked.previous_secret == secret[:10] + "…"
    assert masked.previous_secret_expires_at is not None
    listed = (await store.list_endpoints()).items
    assert [(e.secret, e.previous_secret) for e in listed] == [
        (masked.secret, masked.previous_secret)
    ]

    revealed = await store.get_endpoint(endpoint_id, reveal_secret=True)
    assert (revealed.secret, revealed.previous_secret) == (new_secret, secret)


async def test_endpoint_view_has_every_setting(store: Store) -> None:
    """get_endpoint returns what create_endpoint stored, and a disable's reason and time."""
    endpoint_id, _ = await store.create_endpoint(
        "acct_9",
        "https://example.com/x",
        EndpointOptions(
            description="CRM",
            event_types=("email.sent", "contact.*"),
            max_in_flight=3,
            ordering=Ordering.STRICT,
            rate_limit_per_s=2.5,
        ),
    )
    await store.disable_endpoint(endpoint_id, "maintenance")
    e = await store.get_endpoint(endpoint_id)
    assert isinstance(e, EndpointView)
    assert (e.account_id, e.url, e.description) == ("acct_9", "https://example.com/x", "CRM")
    assert e.event_types == ("contact.*", "email.sent")
    assert (e.max_in_flight, e.ordering, e.rate_limit_per_s) == (3, "strict", 2.5)
    assert (e.enabled, e.disabled_reason) == (False, "maintenance")
    assert e.disabled_at is not None
    assert e.previous_secret is None


async def test_unknown_and_deleted_endpoints_are_unknown(store: Store) -> None:
    """A missing or deleted endpoint raises UnknownEndpoint naming the field."""
    deleted = await add_endpoint(store)
    await store.delete_endpoint(deleted)
    for endpoint_id in (uuid4(), deleted):
        with pytest.raises(UnknownEndpoint) as caught:
            await store.get_endpoint(endpoint_id)
        assert caught.value.field == "endpoint_id"


# -- the delivery log -----------------------------------------------------------------------------


async def test_delivery_pages_are_the_delivery_log_newest_first(
    store: Store, conn: asyncpg.Connection, log: factories.MixedLog
) -> None:
    """Pages of 3 over live and ended deliveries equal webhooks.delivery_log, newest first."""
    pages = await all_pages(lambda cursor: store.list_deliveries(limit=3, cursor=cursor))
    assert [len(p) for p in pages] == [3, 3, 3, 1]
    assert [pair for p in pages for pair in pairs(p)] == await log_rows(conn)
    statuses = sorted(d.status.value for p in pages for d in p)
    assert statuses == sorted(
        ["delivered"] * 3
        + ["failed", "retrying", "in_flight"]
        + ["pending"] * 2
        + ["cancelled"] * 2
    )


async def test_every_status_filter_matches_the_view(
    store: Store, conn: asyncpg.Connection, log: factories.MixedLog
) -> None:
    """Each status filter returns exactly the view's rows with that status, paged by 1."""
    for status in DeliveryStatus:

        def fetch(cursor: str | None, s: DeliveryStatus = status) -> Awaitable[Page[DeliveryView]]:
            return store.list_deliveries(status=s, limit=1, cursor=cursor)

        pages = await all_pages(fetch)
        found = [pair for p in pages for pair in pairs(p)]
        assert found == await log_rows(conn, f"status = '{status.value}'"), status
        assert found, f"the log fixture has no {status} delivery"


async def test_delivery_filters_endpoint_event_type_account_since(
    store: Store, conn: asyncpg.Connection, log: factories.MixedLog
) -> None:
    """Endpoint, event type, account and since filters each return only matching deliveries."""

    async def listed(**filters: object) -> list[tuple[int, str]]:
        page = await store.list_deliveries(limit=100, **filters)  # type: ignore[arg-type]
        return pairs(list(page.items))

    assert await listed(endpoint_id=log.b) == await log_rows(conn, f"endpoint_id = '{log.b}'")
    assert await listed(event_type="contact.created") == await log_rows(
        conn, "event_type = 'contact.created'"
    )
    assert await listed(account_id="acct_2") == await log_rows(conn, "account_id = 'acct_2'")
    assert len(await listed(account_id="acct_2")) == 2
    assert await listed(since=datetime.now(UTC) - timedelta(minutes=5)) == await log_rows(conn)
    assert await listed(since=datetime.now(UTC) + timedelta(minutes=5)) == []
    both = await listed(endpoint_id=log.a, status=DeliveryStatus.PENDING)
    assert both == await log_rows(conn, f"endpoint_id = '{log.a}' AND status = 'pending'")


async def test_delivery_detail_lists_every_attempt_and_the_payload(
    store: Store, conn: asyncpg.Connection, log: factories.MixedLog
) -> None:
    """A failed delivery shows both attempts in order with code, error, excerpt and outcome."""
    failed = (await store.list_deliveries(status=DeliveryStatus.FAILED)).items[0]
    detail = await store.get_delivery(failed.delivery_id)

    assert detail.delivery == failed
    assert [a.attempt for a in detail.attempts] == [1, 2]
    assert [a.outcome for a in detail.attempts] == ["retry", "failed"]
    first = detail.attempts[0]
    assert (first.status_code, first.error_kind, first.error_message) == (
        500,
        "http_status",
        "HTTP 500",
    )
    assert (first.response_excerpt, first.duration_ms) == ("ok", 25)
    assert first.next_attempt_at is not None
    assert detail.attempts[1].next_attempt_at is None
    assert detail.payload is not None
    assert set(detail.payload) == {"n"}

    pending = (await store.list_deliveries(status=DeliveryStatus.PENDING)).items[0]
    assert (await store.get_delivery(pending.delivery_id)).attempts == ()


async def test_unknown_delivery_is_unknown(store: Store) -> None:
    """A delivery id that never existed raises UnknownDelivery naming the field."""
    with pytest.raises(UnknownDelivery) as caught:
        await store.get_delivery(987654321)
    assert caught.value.field == "delivery_id"


async def test_attempts_after_follows_new_attempts_with_filters(
    store: Store, conn: asyncpg.Connection, log: factories.MixedLog
) -> None:
    """attempts_after returns attempts above an id (up to a bound), oldest first, filtered."""
    everything = await store.attempts_after(0)
    ids = [r.attempt.id for r in everything]
    assert ids == sorted(ids)
    assert len(ids) == 6  # 3 delivered + 2 retried + 1 failed
    assert await store.last_attempt_id() == ids[-1]
    assert {r.event_type for r in everything} == {"email.sent"}
    assert {r.account_id for r in everything} == {"acct_1"}

    assert [r.attempt.id for r in await store.attempts_after(ids[2])] == ids[3:]
    assert [r.attempt.id for r in await store.attempts_after(ids[0], up_to=ids[2])] == ids[1:3]
    only_b = await store.attempts_after(0, endpoint_id=log.b)
    assert [r.attempt.outcome for r in only_b] == ["delivered"] * 3
    assert await store.attempts_after(0, account_id="acct_2") == []
    assert len(await store.attempts_after(0, event_type="email.sent")) == 6
    assert await store.attempts_after(0, event_type="contact.created") == []
    assert await store.attempts_after(ids[-1]) == []


async def test_bad_page_size_and_cursor_are_invalid_input(
    store: Store, log: factories.MixedLog
) -> None:
    """Out-of-range limits and foreign or garbled cursors raise InvalidInput naming the field."""
    endpoints = await store.list_endpoints(limit=1)
    assert endpoints.next_cursor is not None
    for bad in (0, 1001):
        with pytest.raises(InvalidInput) as caught:
            await store.list_deliveries(limit=bad)
        assert caught.value.field == "limit"
    for cursor in ("garbage", endpoints.next_cursor, "ZHx4fHk"):
        with pytest.raises(InvalidInput) as caught:
            await store.list_deliveries(cursor=cursor)
        assert caught.value.field == "cursor"


async def test_delivery_log_pages_read_an_index_not_the_whole_history(
    conn: asyncpg.Connection,
) -> None:
    """On 20,000 ended deliveries of one day a page (all, one endpoint's, the failed) is an index
    scan."""
    await conn.execute(
        """
        INSERT INTO webhooks.endpoints (account_id, url, event_types, secret)
        SELECT 'acct_' || g, 'https://example.com/' || g, '{*}', webhooks.new_secret()
          FROM generate_series(1, 200) g;
        INSERT INTO webhooks.delivery_outcomes
            (delivery_id, event_id, event_created_at, event_type, endpoint_id, status, attempts,
             created_at, ended_at)
        SELECT g, g, t.day_end, 'email.sent', e.ids[g % 200 + 1],
               CASE WHEN g % 500 = 0 THEN 'failed' ELSE 'delivered' END, 1,
               t.day_end - g * interval '1 second',
               t.day_end - g * interval '1 second' + interval '50 ms'
          FROM generate_series(1, 20000) g,
               (SELECT array_agg(id) AS ids FROM webhooks.endpoints) e,
               -- The history ends in the last minutes of today (UTC), so that all of it lies in
               -- one day's partition whatever the time of the run: from now() back, it crossed
               -- midnight in the runs of the first hours of the day, and a partition holding a few
               -- minutes of it may rightly be read with a sequential scan.
               (SELECT date_trunc('day', now() AT TIME ZONE 'UTC') AT TIME ZONE 'UTC'
                       + interval '1 day' - interval '1 minute' AS day_end) t;
        ANALYZE webhooks.endpoints, webhooks.delivery_outcomes;
        """
    )
    endpoint_id = await conn.fetchval("SELECT id FROM webhooks.endpoints LIMIT 1")
    plans: list[str] = []
    conn.add_log_listener(lambda _conn, message: plans.append(message.message))
    # auto_explain shows the plans of the statements inside the plpgsql functions.
    await conn.execute(
        "LOAD 'auto_explain'; SET auto_explain.log_min_duration = 0;"
        " SET auto_explain.log_nested_statements = on; SET client_min_messages = log"
    )
    for filters in ((None, None), (None, endpoint_id), ("failed", None)):
        plans.clear()
        await conn.fetch(
            "SELECT * FROM webhooks.list_deliveries_v2($1, $2, NULL, NULL, NULL, NULL, NULL, 51)",
            *filters,
        )
        plan = next(p for p in plans if "FROM webhooks.delivery_outcomes o" in p)
        assert "Index Scan Backward using delivery_outcomes" in plan, plan
        assert "Bitmap Heap Scan on delivery_outcomes" not in plan, plan
        # Partitions with no rows at all may be scanned; the one holding the history may not.
        for partition in re.findall(r"Seq Scan on (delivery_outcomes\w*)", plan):
            assert not await conn.fetchval(f"SELECT EXISTS (TABLE webhooks.{partition})"), plan
