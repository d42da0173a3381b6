"""The portal's browser tests: Debian's Chromium (/usr/bin/chromium) driven by Playwright.

Playwright's own browser downloads are never used (no ``playwright install``): ``launch`` runs
the system's Chromium, which ``tests/check.py`` installs with apt where it is missing. One
browser serves a test module; each test gets a fresh context (a new profile) from
:func:`loopback_context`, which aborts and records every request of the page to an address
other than loopback, so that a regression cannot reach the internet, and fails the test if
there was one, or if the page threw a JavaScript error or broke its Content-Security-Policy.

Screenshots go to ``artifacts/portal/`` (ignored by git); the e2e conftest prints the folder.
"""

from __future__ import annotations

import ipaddress
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from playwright.async_api import Browser, BrowserContext, Page, Playwright, Route, expect

__all__ = [
    "ARTIFACTS",
    "CHROMIUM",
    "PageWatch",
    "Portal",
    "launch",
    "loopback_context",
    "no_horizontal_scroll",
    "snap",
]

ROOT = Path(__file__).resolve().parents[2]
CHROMIUM = Path("/usr/bin/chromium")
ARTIFACTS = ROOT / "artifacts" / "portal"
# Failure deadline of Playwright's waits (they return as soon as the page is in the state).
WAIT_MS = 20_000
# Chromium's own resolver answers no name but localhost: a second fence behind the route below,
# for requests Chromium makes itself (updates, safe browsing) that pages cannot intercept.
CHROMIUM_ARGS = [
    "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE localhost, EXCLUDE 127.0.0.1",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-domain-reliability",
    "--no-pings",
]
expect.set_options(timeout=WAIT_MS)


@dataclass(frozen=True)
class Portal:
    """A running engine's portal: its base URL and the credential the tests open it with."""

    base: str
    token: str
    account: str

    def url(self, *, token: str | None = None, account: str | None = None) -> str:
        """The link MisarMail's backend would hand out: the token in the fragment."""
        return f"{self.base}/portal#token={token or self.token}&account={account or self.account}"


def chromium() -> str:
    """The system's Chromium; fails (never skips) when it is not installed."""
    if not CHROMIUM.exists():
        raise AssertionError(
            f"{CHROMIUM} is missing: `python3 tests/check.py` installs it (apt-get install "
            "chromium)"
        )
    return str(CHROMIUM)


async def launch(playwright: Playwright) -> Browser:
    """Start the system's headless Chromium."""
    return await playwright.chromium.launch(executable_path=chromium(), args=CHROMIUM_ARGS)


def _is_loopback(url: str) -> bool:
    parts = urlsplit(url)
    if parts.scheme in ("data", "blob", "about"):
        return True
    host = (parts.hostname or "").strip("[]")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@dataclass
class PageWatch:
    """What the context's pages did that a test must not let pass: requests beyond loopback
    (aborted), JavaScript errors and CSP violations (from the console)."""

    refused: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    csp_violations: list[str] = field(default_factory=list)

    def watch(self, page: Page) -> None:
        page.on("pageerror", lambda error: self.errors.append(str(error)))
        page.on("console", self._console)

    def _console(self, message: Any) -> None:
        text = str(message.text)
        if "Content Security Policy" in text:
            self.csp_violations.append(text)


@asynccontextmanager
async def loopback_context(
    browser: Browser, *, expect_csp_violations: bool = False, **options: Any
) -> AsyncIterator[tuple[BrowserContext, PageWatch]]:
    """A fresh browser context whose requests may reach loopback only.

    ``options`` go to ``new_context`` (viewport, time zone, permissions). At exit the test fails
    if a request beyond loopback was tried, a page threw, or (unless
    ``expect_csp_violations``) the CSP refused something.
    """
    context = await browser.new_context(**options)
    context.set_default_timeout(WAIT_MS)
    watch = PageWatch()

    async def fence(route: Route) -> None:
        if _is_loopback(route.request.url):
            await route.continue_()
        else:
            watch.refused.append(route.request.url)
            await route.abort("blockedbyclient")

    await context.route("**/*", fence)
    context.on("page", watch.watch)
    try:
        yield context, watch
    finally:
        await context.close()
    assert watch.refused == [], f"the page tried to leave loopback: {watch.refused}"
    assert watch.errors == [], f"the page threw: {watch.errors}"
    if not expect_csp_violations:
        assert watch.csp_violations == [], f"CSP refused: {watch.csp_violations}"


async def snap(page: Page, name: str) -> Path:
    """A full-page screenshot ``artifacts/portal/<name>.png``; returns its path."""
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    path = ARTIFACTS / f"{name}.png"
    await page.screenshot(path=str(path), full_page=True)
    return path


async def no_horizontal_scroll(page: Page) -> None:
    """Fail if the page is wider than its viewport (unreadable on a phone: it scrolls sideways)."""
    widths = await page.evaluate("() => [document.documentElement.scrollWidth, window.innerWidth]")
    assert widths[0] <= widths[1], f"the page is {widths[0]} px wide in a {widths[1]} px viewport"
