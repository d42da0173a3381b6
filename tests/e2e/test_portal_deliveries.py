"""The portal's delivery log, clicked through in headless Chromium against a real engine.

One account with two endpoints on a real receiver: ``/ok`` answers 200, ``/broken`` answers 500
with an HTML body, so its deliveries fail after their one retry. The page filters and pages the
log, shows each attempt, redelivers and recovers, with times in the viewer's time zone (the
browser runs in Asia/Kathmandu, UTC+05:45, so that a time left in UTC could not pass).
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import asyncpg
import pytest
from playwright.async_api import Browser, ViewportSize, expect

from engine.signing import verify_signature
from tests.e2e.conftest import PORTAL_ACCOUNT
from tests.support.engines import create_endpoint, wait_until
from tests.support.factories import emit
from tests.support.portal import Portal, loopback_context, no_horizontal_scroll, snap
from tests.support.receiver import Receiver, Reply

DESKTOP = ViewportSize(width=1280, height=900)
PHONE = ViewportSize(width=360, height=780)
ZONE = "Asia/Kathmandu"
BROKEN_BODY = b"<h1>Internal error</h1><script>window.__pwned = 1</script>"
SENT = 21  # email.sent events: to /ok only
BOUNCED = 2  # email.bounced events: to /ok and /broken


def local_input(moment: datetime) -> str:
    """``moment`` as the viewer types it into a datetime-local field (their zone, minutes)."""
    return moment.astimezone(ZoneInfo(ZONE)).strftime("%Y-%m-%dT%H:%M")


@pytest.fixture
async def log(portal: Portal, receiver: Receiver, conn: asyncpg.Connection) -> tuple[str, str]:
    """The two endpoints' ids and secrets after every delivery ended: 23 delivered to /ok, 2
    failed at /broken (each after two attempts)."""
    await conn.execute("UPDATE webhooks.settings SET retry_schedule = '{100 milliseconds}'")
    receiver.script("/broken", Reply(status=500, body=BROKEN_BODY))
    await create_endpoint(conn, receiver.url("/ok"), account=PORTAL_ACCOUNT, description="Feed")
    broken, secret = await create_endpoint(
        conn,
        receiver.url("/broken"),
        account=PORTAL_ACCOUNT,
        types=("email.bounced",),
        description="Bounces",
    )
    for n in range(SENT):
        await emit(conn, PORTAL_ACCOUNT, "email.sent", {"n": n})
    for n in range(BOUNCED):
        await emit(conn, PORTAL_ACCOUNT, "email.bounced", {"n": n, "bounce_type": "hard"})

    async def ended() -> bool:
        done = await conn.fetchval(
            "SELECT count(*) FROM webhooks.delivery_log WHERE ended_at IS NOT NULL"
        )
        return bool(done == SENT + 2 * BOUNCED)

    await wait_until(ended, what="every delivery to end")
    return str(broken), secret


async def test_the_log_filters_by_status_event_endpoint_and_time_and_pages(
    browser: Browser, log: tuple[str, str], portal: Portal
) -> None:
    """Each filter narrows the log to what it names, a time after the last delivery empties it,
    pages of 20 go older and back, and times show in the viewer's zone."""
    async with loopback_context(browser, viewport=DESKTOP, timezone_id=ZONE, locale="en-US") as (
        context,
        _,
    ):
        page = await context.new_page()
        await page.goto(portal.url())
        await page.get_by_role("button", name="Delivery log").click()
        rows = page.locator("tbody tr")
        await expect(rows).to_have_count(20)
        await expect(page.get_by_text("Page 1")).to_be_visible()
        await expect(page.get_by_role("button", name="← Newer")).to_be_disabled()

        created = page.locator("tbody tr time").first
        instant = datetime.fromisoformat(str(await created.get_attribute("datetime")))
        shown = instant.astimezone(ZoneInfo(ZONE))
        await expect(created).to_contain_text(shown.strftime("%H:%M:%S"))
        await expect(created).to_contain_text("GMT+5:45")
        await no_horizontal_scroll(page)
        await snap(page, "delivery-log-1280")

        await page.get_by_role("button", name="Older →").click()
        await expect(page.get_by_text("Page 2")).to_be_visible()
        await expect(rows).to_have_count(SENT + 2 * BOUNCED - 20)
        await expect(page.get_by_role("button", name="Older →")).to_be_disabled()
        await page.get_by_role("button", name="← Newer").click()
        await expect(rows).to_have_count(20)

        await page.get_by_label("Status").select_option("failed")
        await page.get_by_role("button", name="Apply filters").click()
        await expect(rows).to_have_count(BOUNCED)
        for n in range(BOUNCED):
            await expect(rows.nth(n)).to_contain_text("Failed")
            await expect(rows.nth(n)).to_contain_text("Bounces")
        await snap(page, "delivery-log-failed-1280")

        await page.get_by_role("button", name="Clear").click()
        await expect(rows).to_have_count(20)
        await page.get_by_label("Endpoint").select_option(label="Bounces")
        await page.get_by_role("button", name="Apply filters").click()
        await expect(rows).to_have_count(BOUNCED)

        await page.get_by_role("button", name="Clear").click()
        await expect(rows).to_have_count(20)
        event_type = page.get_by_label("Event type")
        if await event_type.evaluate("(el) => el.tagName") == "SELECT":
            await event_type.select_option("email.bounced")
        else:
            await event_type.fill("email.bounced")
        await page.get_by_role("button", name="Apply filters").click()
        await expect(rows).to_have_count(2 * BOUNCED)

        since = page.get_by_label("Since (your time)")
        await since.fill(local_input(datetime.now(UTC) + timedelta(minutes=2)))
        await page.get_by_role("button", name="Apply filters").click()
        await expect(page.get_by_text("No deliveries match these filters.")).to_be_visible()
        await since.fill(local_input(datetime.now(UTC) - timedelta(hours=1)))
        await page.get_by_role("button", name="Apply filters").click()
        await expect(rows).to_have_count(2 * BOUNCED)

        await page.get_by_role("button", name="Clear").click()
        await expect(rows).to_have_count(20)
        await page.set_viewport_size(PHONE)
        await no_horizontal_scroll(page)
        await snap(page, "delivery-log-360")


async def test_a_failed_delivery_shows_its_attempts_and_is_redelivered_and_recovered(
    browser: Browser,
    log: tuple[str, str],
    portal: Portal,
    receiver: Receiver,
    conn: asyncpg.Connection,
) -> None:
    """Each attempt shows its status code, latency, error and the receiver's answer as text;
    Redeliver sends the event again; Recover refuses a future time and re-sends what failed
    since a past one (and was not delivered since)."""
    broken, secret = log
    async with loopback_context(browser, viewport=DESKTOP, timezone_id=ZONE, locale="en-US") as (
        context,
        _,
    ):
        page = await context.new_page()
        await page.goto(portal.url())
        await page.get_by_role("button", name="Delivery log").click()
        await page.get_by_label("Status").select_option("failed")
        await page.get_by_role("button", name="Apply filters").click()
        await expect(page.locator("tbody tr")).to_have_count(BOUNCED)
        first = page.locator("tbody tr").first
        delivery_id = int(str(await first.get_attribute("data-delivery")))
        await first.get_by_role("button").click()

        await expect(page.get_by_role("heading", name=f"Delivery {delivery_id}")).to_be_visible()
        attempts = page.locator("li.attempt")
        await expect(attempts).to_have_count(2)
        stored = await conn.fetch(
            "SELECT attempt, status_code, duration_ms, error_kind FROM webhooks.attempts"
            " WHERE delivery_id = $1 ORDER BY attempt",
            delivery_id,
        )
        for n, row in enumerate(stored):
            attempt = attempts.nth(n)
            await expect(attempt.locator(".status-code")).to_have_text("HTTP 500")
            await expect(attempt.locator(".latency")).to_have_text(f"{row['duration_ms']} ms")
            await expect(attempt.locator(".error")).to_contain_text(str(row["error_kind"]))
            await expect(attempt.locator("pre.response")).to_have_text(BROKEN_BODY.decode())
        assert await page.evaluate("window.__pwned") is None
        await expect(page.locator("main h1")).to_have_count(0)
        await expect(page.locator("pre.payload")).to_contain_text('"bounce_type": "hard"')
        await snap(page, "delivery-1280")
        await page.set_viewport_size(PHONE)
        await no_horizontal_scroll(page)
        await snap(page, "delivery-360")
        await page.set_viewport_size(DESKTOP)

        receiver.script("/broken", Reply(status=200))
        before = len(receiver.received_on("/broken"))
        await page.get_by_role("button", name="Redeliver").click()
        notice = page.get_by_role("status").first
        await expect(notice).to_contain_text("Sent again as delivery")
        redelivered = int(str(await notice.text_content()).rstrip(".").rsplit(" ", 1)[1])
        same_event = await conn.fetchval(
            "SELECT count(DISTINCT event_id) FROM webhooks.delivery_log"
            " WHERE delivery_id = ANY($1::bigint[])",
            [delivery_id, redelivered],
        )
        assert same_event == 1
        request = (await receiver.wait_for(before + 1, "/broken"))[-1]
        verify_signature(request.body, request.headers["X-MisarMail-Signature"], secret)

        await page.get_by_role("button", name="Endpoints", exact=True).click()
        await page.get_by_role("button", name=receiver.url("/broken")).click()
        since = page.get_by_label("Failed since")
        await since.fill(local_input(datetime.now(UTC) + timedelta(minutes=2)))
        await page.get_by_role("button", name="Recover failed deliveries").click()
        await expect(since).to_have_attribute("aria-invalid", "true")
        recover = page.get_by_role("form", name="Recover failed deliveries")
        await expect(recover.locator(".field-error")).to_contain_text("must not be in the future")
        await since.fill(local_input(datetime.now(UTC) - timedelta(hours=1)))
        await page.get_by_role("button", name="Recover failed deliveries").click()
        # The redelivered event was delivered since: only the other failed one goes again.
        await expect(page.get_by_role("status").first).to_have_text(
            "1 delivery is being sent again."
        )
        await receiver.wait_for(before + BOUNCED, "/broken")

    async def all_delivered() -> bool:
        delivered = await conn.fetchval(
            "SELECT count(*) FROM webhooks.delivery_log"
            " WHERE endpoint_id = $1::uuid AND status = 'delivered'",
            broken,
        )
        return bool(delivered == BOUNCED)

    await wait_until(all_delivered, what="the redelivered and recovered deliveries")


async def test_the_log_says_how_many_accepted_events_wait_to_be_sent(
    browser: Browser, portal: Portal, receiver: Receiver, conn: asyncpg.Connection, db_url: str
) -> None:
    """While accepted events cannot be fanned out (another session holds the fan-out's lock, as
    when no engine runs), the log has no row for them and says how many wait and since when, in
    the viewer's zone; another account's waiting event is not counted. Once the lock goes they
    are sent, and the log shows them as deliveries without the note."""
    await create_endpoint(conn, receiver.url("/ok"), account=PORTAL_ACCOUNT)
    await create_endpoint(conn, receiver.url("/other"), account="acct_other")
    holder = await asyncpg.connect(db_url)
    try:
        await holder.execute("SELECT pg_advisory_lock(hashtext('webhooks.fan_out'))")
        for n in range(3):
            await emit(conn, PORTAL_ACCOUNT, "email.sent", {"n": n})  # its fan-out takes nothing
        await emit(conn, "acct_other", "email.sent", {"n": 0})
        async with loopback_context(
            browser, viewport=DESKTOP, timezone_id=ZONE, locale="en-US"
        ) as (context, _):
            page = await context.new_page()
            await page.goto(portal.url())
            await page.get_by_role("button", name="Delivery log").click()
            note = page.locator("#accepted-events")
            await expect(note).to_contain_text("3 events were accepted and are waiting to be sent")
            await expect(note).to_contain_text("GMT+5:45")
            await expect(page.get_by_text("No deliveries yet.")).to_be_visible()
            await snap(page, "delivery-log-accepted-1280")

            await holder.close()  # its session lock goes with it
            await receiver.wait_for(3, "/ok")
            await page.get_by_role("button", name="Delivery log").click()
            await expect(page.locator("tbody tr")).to_have_count(3)
            await expect(note).to_have_count(0)
    finally:
        await holder.close()
