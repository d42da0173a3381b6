"""Fixtures for running the whole engine in-process against a real Postgres and Receiver."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import TYPE_CHECKING, Any

import asyncpg
import pytest

from engine.config import Settings
from tests.support.engines import RunningEngine, launch_engine
from tests.support.loopback_fence import loopback_only
from tests.support.portal import ARTIFACTS, Portal
from tests.support.receiver import Receiver

if TYPE_CHECKING:
    from playwright.async_api import Browser

PORTAL_TOKEN = "portal-operator-token-0123456789abcdef"  # noqa: S105 - a test token
PORTAL_ACCOUNT = "acct_portal"

# Short enough that tests finish quickly, long enough for a loaded 2-core machine.
TEST_SETTINGS = Settings(
    request_timeout_s=2.0,
    shutdown_grace_s=4.0,
    poll_interval_s=0.2,
    listener_probe_s=0.5,
    migrate=False,
    admin_port=0,  # a free port each: tests run several engines at once
)


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    """A scriptable HTTP receiver on 127.0.0.1."""
    async with Receiver() as r:
        yield r


@pytest.fixture
def loopback_fence() -> Iterator[list[str]]:
    """No connection beyond loopback during the test (see tests.support.loopback_fence); the test
    fails afterwards if anything tried one."""
    with loopback_only() as refused:
        yield refused
    assert refused == [], f"connections beyond loopback were attempted: {refused}"


@pytest.fixture
async def open_policy(conn: asyncpg.Connection) -> None:
    """Let the engine reach the loopback receiver over http, with a retry schedule in seconds."""
    await conn.execute(
        "UPDATE webhooks.settings SET allow_http = true, allow_private_networks = true,"
        " retry_schedule = '{1 second, 1 second, 1 second}', retry_jitter = 0"
    )


@pytest.fixture
async def start_engine(
    db_url: str,
) -> AsyncIterator[Callable[..., Awaitable[RunningEngine]]]:
    """Start engines on this test's database; all are stopped at the end of the test."""
    running: list[RunningEngine] = []

    async def start(**overrides: Any) -> RunningEngine:
        handle = await launch_engine(TEST_SETTINGS.replace(**overrides), db_url)
        running.append(handle)
        return handle

    yield start
    for handle in running:
        if not handle.task.done():
            await handle.stop()


@pytest.fixture(scope="module")
async def browser() -> AsyncIterator[Browser]:
    """One headless Chromium for a test module's portal tests (tests.support.portal)."""
    # Imported here: only the portal's tests drive a browser.
    from playwright.async_api import async_playwright

    from tests.support.portal import launch

    async with async_playwright() as playwright:
        chromium = await launch(playwright)
        try:
            yield chromium
        finally:
            await chromium.close()


@pytest.fixture
async def portal(
    open_policy: None, start_engine: Callable[..., Awaitable[RunningEngine]]
) -> Portal:
    """An engine with an operator token, serving the portal, that may deliver to loopback."""
    running = await start_engine(admin_token=PORTAL_TOKEN)
    assert running.engine.admin_url is not None
    return Portal(running.engine.admin_url, PORTAL_TOKEN, PORTAL_ACCOUNT)


def pytest_terminal_summary(terminalreporter: Any) -> None:
    """Say where the portal tests left their screenshots."""
    if ARTIFACTS.is_dir() and any(ARTIFACTS.glob("*.png")):
        terminalreporter.write_line(f"portal screenshots: {ARTIFACTS}")
