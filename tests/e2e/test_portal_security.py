"""The portal page's defences, in headless Chromium and over plain HTTP against a real engine.

The page sends a strict CSP and frame headers; untrusted text (an endpoint's description, a
receiver's answer) renders as text; the token leaves the address bar and is kept nowhere; a
bad token gets a clear page; and the page works inside an iframe of another loopback origin
that ``WEBHOOKS_PORTAL_FRAME_ANCESTORS`` names, and is refused in one it does not name.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Awaitable, Callable
from urllib.parse import quote

import aiohttp
import asyncpg
import pytest
from aiohttp import web
from playwright.async_api import Browser, expect

from engine.admin.portal import ASSETS
from engine.admin.routes import openapi_document
from tests.e2e.conftest import PORTAL_ACCOUNT, PORTAL_TOKEN
from tests.support.engines import RunningEngine, create_endpoint, wait_until
from tests.support.factories import emit
from tests.support.portal import Portal, loopback_context, snap
from tests.support.receiver import Receiver, Reply

StartEngine = Callable[..., Awaitable[RunningEngine]]
STRICT = (
    "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; "
    "img-src 'self' data:; base-uri 'none'; form-action 'none'; frame-ancestors "
)
HOSTILE_DESCRIPTION = (
    '<img src="/x" onerror="window.__pwned = 1"><script>window.__pwned = 2</script>'
)
HOSTILE_BODY = "<b>bold</b><script>window.__pwned = 3</script>"


async def test_every_portal_file_sends_the_strict_policy_and_frame_headers(
    portal: Portal, start_engine: StartEngine
) -> None:
    """Each file answers with the CSP (frame-ancestors 'none' by default, else the configured
    origins), nosniff, no-referrer and no cookie, without a token."""
    framed = await start_engine(
        admin_token=PORTAL_TOKEN,
        portal_frame_ancestors="https://app.misarmail.com  'self'",
    )
    bases = {"'none'": portal.base, "https://app.misarmail.com 'self'": framed.engine.admin_url}
    async with aiohttp.ClientSession() as session:
        for ancestors, base in bases.items():
            for path, (_, content_type) in ASSETS.items():
                async with session.get(f"{base}{path}") as response:
                    assert response.status == 200, path
                    assert response.content_type == content_type
                    assert response.headers["Content-Security-Policy"] == STRICT + ancestors
                    assert response.headers["X-Content-Type-Options"] == "nosniff"
                    assert response.headers["Referrer-Policy"] == "no-referrer"
                    assert "Set-Cookie" not in response.headers
                    assert len(await response.read()) > 100
            async with session.get(f"{base}/v1/endpoints") as response:
                assert response.status == 401, "the API itself still needs the token"


async def test_untrusted_text_renders_as_text(
    browser: Browser, portal: Portal, receiver: Receiver, conn: asyncpg.Connection
) -> None:
    """A description with markup and a receiver answering HTML show as their literal text:
    no element is made from them and no script runs."""
    receiver.script("/html", Reply(status=502, body=HOSTILE_BODY.encode()))
    await conn.execute("UPDATE webhooks.settings SET retry_schedule = '{}'")
    await create_endpoint(
        conn, receiver.url("/html"), account=PORTAL_ACCOUNT, description=HOSTILE_DESCRIPTION
    )
    await emit(conn, PORTAL_ACCOUNT, "email.clicked")

    async def failed() -> bool:
        status = await conn.fetchval("SELECT status FROM webhooks.delivery_log")
        return bool(status == "failed")

    await wait_until(failed, what="the delivery to fail")
    async with loopback_context(browser) as (context, _):
        page = await context.new_page()
        await page.goto(portal.url())
        await expect(page.locator("li.card .description")).to_have_text(HOSTILE_DESCRIPTION)
        await page.locator("li.card").get_by_role("button").click()
        await expect(page.get_by_role("heading", level=2)).to_have_text(HOSTILE_DESCRIPTION)
        await page.get_by_role("button", name="Delivery log").click()
        await page.locator("tbody tr").get_by_role("button").click()
        await expect(page.locator("pre.response")).to_have_text(HOSTILE_BODY)
        await snap(page, "hostile-text-1280")
        assert await page.evaluate("window.__pwned") is None
        assert await page.locator("main img, main script, main b").count() == 0


async def test_the_token_leaves_the_address_bar_and_is_kept_nowhere(
    browser: Browser, portal: Portal, conn: asyncpg.Connection
) -> None:
    """After loading, the URL has no fragment, and the page has set no cookie and stored
    nothing; the token still works for its API calls."""
    await create_endpoint(conn, "http://127.0.0.1:9/x", account=PORTAL_ACCOUNT)
    async with loopback_context(browser) as (context, _):
        page = await context.new_page()
        await page.goto(portal.url())
        await expect(page.locator("li.card")).to_have_count(1)
        assert page.url == f"{portal.base}/portal"
        stored = await page.evaluate(
            "[localStorage.length, sessionStorage.length, document.cookie, indexedDB.databases]"
            ".map(String)"
        )
        assert stored[:3] == ["0", "0", ""]
        assert await context.cookies() == []
        await page.get_by_role("button", name="Delivery log").click()
        await expect(page.get_by_text("No deliveries yet.")).to_be_visible()


@pytest.mark.parametrize(
    ("fragment", "heading"),
    [
        ("#token=not-the-token&account=acct_portal", "This link has expired"),
        ("#token=" + PORTAL_TOKEN[:-1] + "X", "This link has expired"),
        ("", "No access link"),
    ],
)
async def test_a_missing_or_wrong_token_gets_a_clear_page(
    browser: Browser, portal: Portal, fragment: str, heading: str
) -> None:
    """A tampered or expired token (the API answers 401) and a missing one each say what to
    do, and show no controls."""
    async with loopback_context(browser) as (context, _):
        page = await context.new_page()
        await page.goto(f"{portal.base}/portal{fragment}")
        await expect(page.get_by_role("heading", name=heading)).to_be_visible()
        await expect(page.get_by_text("MisarMail settings")).to_be_visible()
        await expect(page.get_by_role("navigation")).to_be_hidden()
        assert await page.get_by_role("button").count() == 0


@pytest.fixture
async def embedder() -> AsyncIterator[str]:
    """The origin of a stand-in for MisarMail's settings page, ``http://localhost:<port>``:
    ``/?src=<portal url>`` frames that URL (another origin than the engine's 127.0.0.1)."""

    async def settings_page(request: web.Request) -> web.Response:
        src = request.query["src"].replace('"', "%22")
        return web.Response(
            text=(
                "<!doctype html><title>MisarMail settings</title><h1>Settings</h1>"
                f'<iframe src="{src}" title="Webhooks" width="1000" height="700"></iframe>'
            ),
            content_type="text/html",
        )

    app = web.Application()
    app.router.add_get("/", settings_page)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    port = runner.addresses[0][1]
    try:
        yield f"http://localhost:{port}"
    finally:
        await runner.cleanup()


async def test_the_page_works_in_an_iframe_of_an_allowed_origin_only(
    browser: Browser,
    open_policy: None,
    start_engine: StartEngine,
    embedder: str,
    conn: asyncpg.Connection,
    receiver: Receiver,
) -> None:
    """Framed by the origin WEBHOOKS_PORTAL_FRAME_ANCESTORS names, the page runs without any
    cookie and adds an endpoint; framed by another, Chromium refuses to show it."""
    origin = embedder
    allowed = await start_engine(admin_token=PORTAL_TOKEN, portal_frame_ancestors=origin)
    other = await start_engine(
        admin_token=PORTAL_TOKEN, portal_frame_ancestors="https://app.misarmail.com"
    )
    assert allowed.engine.admin_url is not None
    assert other.engine.admin_url is not None
    allowed_portal = Portal(allowed.engine.admin_url, PORTAL_TOKEN, PORTAL_ACCOUNT)
    other_portal = Portal(other.engine.admin_url, PORTAL_TOKEN, PORTAL_ACCOUNT)

    async with loopback_context(browser) as (context, _):
        page = await context.new_page()
        await page.goto(f"{origin}/?src={_quote(allowed_portal.url())}")
        frame = page.frame_locator("iframe")
        await expect(frame.get_by_role("heading", name="Endpoints")).to_be_visible()
        await frame.get_by_role("button", name="Add endpoint").click()
        await frame.get_by_label("Endpoint URL").fill(receiver.url("/framed"))
        await frame.get_by_role("button", name="Add endpoint").click()
        await expect(frame.get_by_role("textbox", name="New signing secret")).to_be_visible()
        await snap(page, "framed-1280")
        assert await context.cookies() == []
    assert await conn.fetchval("SELECT url FROM webhooks.endpoints") == receiver.url("/framed")

    async with loopback_context(browser, expect_csp_violations=True) as (context, watch):
        page = await context.new_page()
        async with page.expect_console_message(
            lambda m: "frame-ancestors" in m.text and other_portal.base in m.text
        ):
            await page.goto(f"{origin}/?src={_quote(other_portal.url())}")
        framed = [f for f in page.frames if f != page.main_frame]
        assert len(framed) == 1

        # Chromium reports the violation before it puts its error page in the frame, whose URL is
        # empty until then: wait for the error page, then check that the portal is not in it.
        async def refused() -> bool:
            return framed[0].url.startswith("chrome-error://")

        await wait_until(refused, what="the refused frame's error page")
        assert await framed[0].locator("#main").count() == 0, "the refused frame shows the page"
        assert watch.csp_violations


def _quote(url: str) -> str:
    return quote(url, safe="")


# Account-scoped portal tokens (issue 16, part 1) are built beside this page; where the engine
# mints them, the page is opened with one, as MisarMail's backend would; before, with the
# operator token and the account in the link. The page must show that one account either way.
PORTAL_ACCESS = "/v1/accounts/{account_id}/portal-access" in json.loads(openapi_document())["paths"]
PORTAL_KEY = "portal-key-for-tests-0123456789abcdef"


async def test_the_page_shows_only_its_accounts_endpoints_and_creates_there(
    browser: Browser, open_policy: None, start_engine: StartEngine, conn: asyncpg.Connection
) -> None:
    """Opened for one account, the page lists that account's endpoints only, an endpoint added
    there belongs to it, and its log holds none of another account's deliveries."""
    keys = {"portal_key": PORTAL_KEY} if PORTAL_ACCESS else {}
    running = await start_engine(admin_token=PORTAL_TOKEN, **keys)
    base = running.engine.admin_url
    assert base is not None
    await create_endpoint(conn, "http://127.0.0.1:9/mine", account="acct_mine")
    await create_endpoint(conn, "http://127.0.0.1:9/theirs", account="acct_theirs")
    await emit(conn, "acct_theirs", "email.sent")
    if PORTAL_ACCESS:
        async with (
            aiohttp.ClientSession() as session,
            session.post(
                f"{base}/v1/accounts/acct_mine/portal-access",
                headers={"Authorization": f"Bearer {PORTAL_TOKEN}"},
                json={"ttl_s": 600},
            ) as answer,
        ):
            assert answer.status == 201, await answer.text()
            url = (await answer.json())["url"]
    else:
        url = Portal(base, PORTAL_TOKEN, "acct_mine").url()
    async with loopback_context(browser) as (context, _):
        page = await context.new_page()
        await page.goto(url)
        await expect(page.locator("li.card")).to_have_count(1)
        await expect(page.locator("li.card")).to_contain_text("/mine")
        await expect(page.locator("#account")).to_contain_text("acct_mine")
        await page.get_by_role("button", name="Add endpoint").click()
        await page.get_by_label("Endpoint URL").fill("http://127.0.0.1:9/new")
        await page.get_by_role("button", name="Add endpoint").click()
        await expect(page.get_by_role("textbox", name="New signing secret")).to_be_visible()
        await page.get_by_role("button", name="Delivery log").click()
        await expect(page.get_by_text("No deliveries yet.")).to_be_visible()
    owner = await conn.fetchval(
        "SELECT account_id FROM webhooks.endpoints WHERE url = 'http://127.0.0.1:9/new'"
    )
    assert owner == "acct_mine"
