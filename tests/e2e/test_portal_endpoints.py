"""The portal's endpoint flows, clicked through in headless Chromium against a real engine.

Each test opens ``/portal#token=...`` of an engine on a fresh database, acts as the customer does
(add, list, edit, disable, enable, delete, reveal, rotate, send a test event) and then checks
the database and a real receiver, which verifies every signature with the secret the page showed.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
from playwright.async_api import Browser, Page, ViewportSize, expect
from standardwebhooks import Webhook

from engine.signing import verify_signature
from tests.e2e.conftest import PORTAL_ACCOUNT
from tests.support.engines import create_endpoint, wait_until
from tests.support.factories import emit
from tests.support.portal import Portal, loopback_context, no_horizontal_scroll, snap
from tests.support.receiver import Received, Receiver, Reply

DESKTOP = ViewportSize(width=1280, height=900)
PHONE = ViewportSize(width=360, height=780)
CLIPBOARD = ["clipboard-read", "clipboard-write"]


def verified(request: Received, secret: str) -> dict[str, Any]:
    """The request's envelope, after both signature schemes verified with ``secret``."""
    verify_signature(request.body, request.headers["X-MisarMail-Signature"], secret)
    envelope: dict[str, Any] = Webhook(secret).verify(request.body, dict(request.headers))
    return envelope


async def has_catalogue(page: Page) -> bool:
    """Whether this engine publishes the event catalogue (the page picks types from it)."""
    paths: dict[str, Any] = await page.evaluate(
        "async () => (await (await fetch('openapi.json')).json()).paths"
    )
    return "/v1/event-types" in paths


async def unlabelled_controls(page: Page) -> list[str]:
    """The page's form controls and buttons that have no accessible name."""
    found: list[str] = await page.evaluate(
        """() => [...document.querySelectorAll('input, select, textarea, button')]
            .filter((el) => !el.closest('[hidden]'))
            .filter((el) => el.tagName === 'BUTTON'
                ? !(el.textContent.trim() || el.getAttribute('aria-label'))
                : !(el.labels.length > 0 || el.getAttribute('aria-label')))
            .map((el) => el.outerHTML)"""
    )
    return found


async def test_adding_an_endpoint_checks_the_url_picks_events_and_shows_the_secret_once(
    browser: Browser, portal: Portal, receiver: Receiver, conn: asyncpg.Connection
) -> None:
    """The API's URL error shows on the field; the endpoint gets the picked event types; its
    secret is shown once with a working copy button, signs the deliveries, and can be revealed
    again later."""
    async with loopback_context(browser, viewport=DESKTOP, permissions=CLIPBOARD) as (context, _):
        page = await context.new_page()
        await page.goto(portal.url())
        await expect(page.get_by_role("heading", name="Endpoints")).to_be_visible()
        await expect(page.get_by_text("No endpoints yet.")).to_be_visible()
        assert "#" not in page.url, "the token stays in the address bar"
        await expect(page.locator("#account")).to_have_text(f"Account {PORTAL_ACCOUNT}")
        await snap(page, "endpoints-empty-1280")

        await page.get_by_role("button", name="Add endpoint").click()
        url_field = page.get_by_label("Endpoint URL")
        await expect(url_field).to_be_focused()
        await url_field.fill("ftp://example.com/hooks")
        catalogue = await has_catalogue(page)
        if catalogue:
            await page.get_by_label("All events (*)").uncheck()
            await page.get_by_label("email.bounced", exact=False).first.check()
            await page.get_by_label("All contact events (contact.*)").check()
        else:
            await page.get_by_label("Events to send").fill("email.bounced, contact.*")
        await page.get_by_label("Description").fill("CRM sync")
        await page.get_by_role("button", name="Add endpoint").click()
        await expect(url_field).to_have_attribute("aria-invalid", "true")
        await expect(url_field).to_be_focused()
        await expect(page.locator(".field-error").first).to_contain_text("scheme 'ftp'")
        assert await conn.fetchval("SELECT count(*) FROM webhooks.endpoints") == 0
        await snap(page, "add-endpoint-error-1280")

        await url_field.fill(receiver.url("/hooks"))
        await page.get_by_role("button", name="Add endpoint").click()
        secret_field = page.get_by_label("New signing secret")
        await expect(secret_field).to_be_visible()
        await expect(page.get_by_role("status").first).to_have_text("Endpoint added.")
        secret = await secret_field.input_value()
        assert secret.startswith("whsec_")
        await snap(page, "endpoint-created-1280")
        await page.get_by_role("button", name="Copy").click()
        await expect(page.get_by_text("Copied", exact=True)).to_be_visible()
        assert await page.evaluate("navigator.clipboard.readText()") == secret

        row = await conn.fetchrow(
            "SELECT account_id, url, description, event_types FROM webhooks.endpoints"
        )
        assert row is not None
        assert (row["account_id"], row["url"], row["description"]) == (
            PORTAL_ACCOUNT,
            receiver.url("/hooks"),
            "CRM sync",
        )
        assert sorted(row["event_types"]) == ["contact.*", "email.bounced"]
        await emit(conn, PORTAL_ACCOUNT, "email.bounced", {"recipient": "a@example.com"})
        (request,) = await receiver.wait_for(1, "/hooks")
        assert verified(request, secret)["type"] == "email.bounced"

        # Shown once: back on the endpoint it is masked until revealed.
        await page.get_by_role("button", name="Endpoints", exact=True).click()
        await page.get_by_role("button", name=receiver.url("/hooks")).click()
        await expect(page.get_by_role("heading", name="CRM sync")).to_be_visible()
        await expect(page.get_by_label("New signing secret")).to_have_count(0)
        await expect(page.get_by_text(secret)).to_have_count(0)
        await page.get_by_role("button", name="Reveal secret").click()
        await expect(page.get_by_role("textbox", name="Signing secret", exact=True)).to_have_value(
            secret
        )
        assert await unlabelled_controls(page) == []


async def test_the_list_shows_each_endpoints_health(
    browser: Browser, portal: Portal, receiver: Receiver, conn: asyncpg.Connection
) -> None:
    """Healthy (last success), failing (since when) and disabled (why) endpoints each say so,
    readable at 1280 px and at 360 px."""
    receiver.script("/down", Reply(status=500, body=b"oops"))
    receiver.script("/gone", Reply(status=410))
    ok, _ = await create_endpoint(
        conn, receiver.url("/ok"), account=PORTAL_ACCOUNT, description="Analytics feed"
    )
    down, _ = await create_endpoint(
        conn, receiver.url("/down"), account=PORTAL_ACCOUNT, description="Bounce handler"
    )
    gone, _ = await create_endpoint(conn, receiver.url("/gone"), account=PORTAL_ACCOUNT)
    await create_endpoint(conn, receiver.url("/other"), account="acct_someone_else")
    await emit(conn, PORTAL_ACCOUNT, "email.sent")

    async def settled() -> bool:
        states = await conn.fetch(
            "SELECT id, enabled, last_success_at IS NOT NULL AS ok,"
            " failing_since IS NOT NULL AS failing FROM webhooks.endpoints"
        )
        by_id = {r["id"]: r for r in states}
        return by_id[ok]["ok"] and by_id[down]["failing"] and not by_id[gone]["enabled"]

    await wait_until(settled, what="one healthy, one failing and one disabled endpoint")

    async with loopback_context(browser, viewport=DESKTOP) as (context, _):
        page = await context.new_page()
        await page.goto(portal.url())
        cards = page.locator("li.card")
        await expect(cards).to_have_count(3)  # the other account's endpoint is not listed
        healthy = cards.filter(has_text="Analytics feed")
        await expect(healthy.locator(".badge")).to_have_text("Healthy")
        await expect(healthy.locator(".health")).to_contain_text("Last success")
        failing = cards.filter(has_text="Bounce handler")
        await expect(failing.locator(".badge")).to_have_text("Failing")
        await expect(failing.locator(".health")).to_contain_text("Failing since")
        disabled = cards.filter(has_text="/gone")
        await expect(disabled.locator(".badge")).to_have_text("Disabled")
        await expect(disabled.locator(".health")).to_contain_text("endpoint answered 410 Gone")
        await no_horizontal_scroll(page)
        await snap(page, "endpoints-1280")
        await page.set_viewport_size(PHONE)
        await no_horizontal_scroll(page)
        await snap(page, "endpoints-360")
        await cards.filter(has_text="Bounce handler").get_by_role("button").click()
        await expect(page.get_by_role("heading", name="Bounce handler")).to_be_visible()
        health = page.locator("dd.health")
        await expect(health).to_contain_text("Failing since")
        stamp = await health.locator("time").get_attribute("datetime")
        await expect(health.locator("time")).to_have_text(re.compile(r"\d\d:\d\d:\d\d"))
        assert stamp is not None
        await expect(page.locator("main")).not_to_contain_text("[object")
        await no_horizontal_scroll(page)
        await snap(page, "endpoint-360")


async def test_edit_disable_enable_and_delete_an_endpoint(
    browser: Browser, portal: Portal, receiver: Receiver, conn: asyncpg.Connection
) -> None:
    """Each action changes the endpoint in the database and the page shows the new state."""
    endpoint_id, _ = await create_endpoint(
        conn, receiver.url("/a"), account=PORTAL_ACCOUNT, description="First"
    )

    async def row() -> asyncpg.Record:
        found = await conn.fetchrow("SELECT * FROM webhooks.endpoints WHERE id = $1", endpoint_id)
        assert found is not None
        return found

    async with loopback_context(browser, viewport=DESKTOP) as (context, _):
        page = await context.new_page()
        await page.goto(portal.url())
        await page.get_by_role("button", name=receiver.url("/a")).click()
        await page.get_by_role("button", name="Edit").click()
        await page.get_by_label("Endpoint URL").fill(receiver.url("/b"))
        await page.get_by_label("Description").fill("Second")
        await page.get_by_role("button", name="Save changes").click()
        await expect(page.get_by_role("status").first).to_have_text("Endpoint saved.")
        await expect(page.locator(".endpoint-url")).to_have_text(receiver.url("/b"))
        edited = await row()
        assert (edited["url"], edited["description"]) == (receiver.url("/b"), "Second")

        await page.get_by_role("button", name="Disable", exact=True).click()
        await page.get_by_label("Reason (optional)").fill("moving servers")
        await page.get_by_role("button", name="Disable endpoint").click()
        await expect(page.locator("dd.health")).to_contain_text("moving servers")
        await expect(page.locator("dd.health .badge")).to_have_text("Disabled")
        current = await row()
        assert (current["enabled"], current["disabled_reason"]) == (False, "moving servers")
        await snap(page, "endpoint-disabled-1280")

        await page.get_by_role("button", name="Enable").click()
        await expect(page.locator("dd.health .badge")).to_have_text("No deliveries yet")
        assert (await row())["enabled"] is True

        await page.get_by_role("button", name="Delete", exact=True).click()
        await page.get_by_role("button", name="Keep it").click()
        assert (await row())["deleted_at"] is None
        await page.get_by_role("button", name="Delete", exact=True).click()
        await page.get_by_role("button", name="Delete endpoint").click()
        await expect(page.get_by_role("status").first).to_have_text("Endpoint deleted.")
        await expect(page.get_by_text("No endpoints yet.")).to_be_visible()
        assert (await row())["deleted_at"] is not None


async def test_rotating_the_secret_keeps_the_old_one_for_the_chosen_grace(
    browser: Browser, portal: Portal, receiver: Receiver, conn: asyncpg.Connection
) -> None:
    """With a grace period both secrets sign; rotating again with none, only the newest does."""
    endpoint_id, first = await create_endpoint(conn, receiver.url("/r"), account=PORTAL_ACCOUNT)
    async with loopback_context(browser, viewport=DESKTOP) as (context, _):
        page = await context.new_page()
        await page.goto(portal.url())
        await page.get_by_role("button", name=receiver.url("/r")).click()
        rotation = page.get_by_label("When rotating")
        await rotation.select_option(label="Keep the old secret for 1 hour")
        before = datetime.now(UTC)
        await page.get_by_role("button", name="Rotate secret").click()
        await expect(page.get_by_text("The previous secret keeps signing until")).to_be_visible()
        second = await page.get_by_label("New signing secret").input_value()
        assert second.startswith("whsec_")
        assert second != first
        expires = await conn.fetchval(
            "SELECT previous_secret_expires_at FROM webhooks.endpoints WHERE id = $1", endpoint_id
        )
        assert before + timedelta(minutes=59) < expires < datetime.now(UTC) + timedelta(hours=1)
        await snap(page, "secret-rotated-1280")

        await emit(conn, PORTAL_ACCOUNT, "email.opened")
        (request,) = await receiver.wait_for(1, "/r")
        assert request.headers["X-MisarMail-Signature"].count("v1=") == 2
        verified(request, first)
        verified(request, second)

        await page.get_by_label("When rotating").select_option(
            label="Stop signing with the old secret now"
        )
        await page.get_by_role("button", name="Rotate secret").click()
        await expect(page.get_by_text("The previous secret no longer signs.")).to_be_visible()
        third = await page.get_by_label("New signing secret").input_value()
        await emit(conn, PORTAL_ACCOUNT, "email.opened")
        request = (await receiver.wait_for(2, "/r"))[1]
        assert request.headers["X-MisarMail-Signature"].count("v1=") == 1
        verified(request, third)


async def test_a_test_event_reaches_the_endpoint_signed(
    browser: Browser, portal: Portal, receiver: Receiver, conn: asyncpg.Connection
) -> None:
    """Send test event delivers the catalogue's example to that endpoint only, signed; an engine
    without test events shows no such control."""
    await create_endpoint(
        conn, receiver.url("/t"), account=PORTAL_ACCOUNT, types=("email.*",), description="T"
    )
    await create_endpoint(conn, receiver.url("/bystander"), account=PORTAL_ACCOUNT)
    secret = await conn.fetchval("SELECT secret FROM webhooks.endpoints WHERE description = 'T'")
    async with loopback_context(browser, viewport=DESKTOP) as (context, _):
        page = await context.new_page()
        await page.goto(portal.url())
        await page.get_by_role("button", name=receiver.url("/t")).click()
        await expect(page.get_by_role("heading", name="T", exact=True)).to_be_visible()
        paths: dict[str, Any] = await page.evaluate(
            "async () => (await (await fetch('openapi.json')).json()).paths"
        )
        if "/v1/endpoints/{id}/test" not in paths:
            await expect(page.get_by_role("heading", name="Test events")).to_have_count(0)
            return
        await page.get_by_label("Event type").select_option("email.bounced")
        await page.get_by_role("button", name="Send test event").click()
        await expect(page.get_by_text("Test event sent as delivery")).to_be_visible()
        (request,) = await receiver.wait_for(1, "/t")
        envelope = verified(request, secret)
        assert (envelope["type"], envelope["test"]) == ("email.bounced", True)
        assert receiver.received_on("/bystander") == []
        await page.get_by_role("button", name="View it").click()
        await expect(page.locator("dd .badge.test")).to_have_text("Test")


async def test_the_page_works_from_the_keyboard_alone(
    browser: Browser, portal: Portal, receiver: Receiver, conn: asyncpg.Connection
) -> None:
    """Tab reaches the controls in order and Enter submits: an endpoint is added without a
    mouse, and every control on the way has a label."""
    async with loopback_context(browser, viewport=DESKTOP) as (context, _):
        page = await context.new_page()
        await page.goto(portal.url())
        await expect(page.get_by_role("heading", name="Endpoints")).to_be_focused()
        await page.keyboard.press("Tab")
        await expect(page.get_by_role("button", name="Add endpoint")).to_be_focused()
        await page.keyboard.press("Enter")
        await expect(page.get_by_label("Endpoint URL")).to_be_focused()
        assert await unlabelled_controls(page) == []
        await page.keyboard.type(receiver.url("/kb"))
        await page.keyboard.press("Tab")
        await expect(page.get_by_label("Description")).to_be_focused()
        await page.keyboard.type("typed")
        await page.keyboard.press("Enter")
        await expect(page.get_by_label("New signing secret")).to_be_visible()
        assert await unlabelled_controls(page) == []
    assert await conn.fetchval(
        "SELECT event_types FROM webhooks.endpoints WHERE description = 'typed'"
    ) == ["*"]
