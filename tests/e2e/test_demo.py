"""`misar-webhooks demo --keep` run as a user would: a subprocess on a machine with only Python.

``--keep`` runs the same demo and then waits with a portal link printed; the test follows that
link in Chromium, then stops the demo with SIGTERM as Ctrl+C would, and checks the whole output.
"""

from __future__ import annotations

import asyncio
import os
import re
import signal
import socket
import sys

import aiohttp
import pytest
from playwright.async_api import Browser, ViewportSize, expect

from tests.support.portal import loopback_context, snap


def _port_open(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(1)
        return sock.connect_ex(("127.0.0.1", port)) == 0


@pytest.mark.slow
@pytest.mark.timeout(180)
async def test_demo_delivers_everything_and_leaves_nothing_running(browser: Browser) -> None:
    """The demo shows retries and the delivery log; kept running, its portal link opens the
    demo account's endpoints and deliveries; on SIGTERM it exits 0 and stops what it started."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("WEBHOOKS_")}
    env["WEBHOOKS_ADMIN_PORT"] = "0"
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "engine", "demo", "--keep",
        env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
    )  # fmt: skip
    assert proc.stdout is not None
    lines: list[str] = []
    try:
        async with asyncio.timeout(150):
            while not lines or not lines[-1].startswith("press Ctrl+C"):
                line = (await proc.stdout.readline()).decode()
                assert line, "the demo ended before printing its portal link:\n" + "".join(lines)
                lines.append(line)
            link = re.search(r"(http://127\.0\.0\.1:\d+)/portal#token=(\S+)", "".join(lines))
            assert link is not None, "".join(lines)
            await _click_around(browser, link[0], link[1], link[2])
            proc.send_signal(signal.SIGTERM)
            out, _ = await proc.communicate()
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    text = "".join(lines) + out.decode()
    assert proc.returncode == 0, text
    assert "Traceback" not in text
    assert "demo: every event was delivered and every signature verified." in text
    assert re.search(r"delivered +(\d+)/\1", text), "progress never reached all delivered"
    assert "SELECT d.delivery_id" in text, "the delivery-log SQL is printed"
    flaky = re.search(r"^ +flaky +delivered +(\d+) +(\d+) *$", text, re.MULTILINE)
    assert flaky is not None, text
    assert int(flaky[2]) == 3 * int(flaky[1]), "each flaky delivery took three attempts"
    assert "rejected: 0" in text

    pg_port = re.search(r"Postgres at postgresql://\S+@127\.0\.0\.1:(\d+)/", text)
    receiver_port = re.search(r"receiver at http://127\.0\.0\.1:(\d+)", text)
    assert pg_port is not None, text
    assert receiver_port is not None, text
    assert not _port_open(int(pg_port[1])), "the embedded Postgres is still listening"
    assert not _port_open(int(receiver_port[1])), "the receiver is still listening"


async def _click_around(browser: Browser, url: str, base: str, token: str) -> None:
    """The portal link works: its token is the demo account's portal token (it lists the demo's
    three endpoints and may not emit), and its page lists them too."""
    async with aiohttp.ClientSession() as session:
        headers = {"Authorization": f"Bearer {token}"}
        async with session.get(f"{base}/v1/session", headers=headers) as r:
            assert r.status == 200
            assert (await r.json())["account_id"] == "acct_demo"
        async with session.get(f"{base}/v1/endpoints", headers=headers) as r:
            assert r.status == 200
            assert len((await r.json())["data"]) == 3
        async with session.post(f"{base}/v1/events", headers=headers, json={}) as r:
            assert r.status == 403  # operator only
    async with loopback_context(browser, viewport=ViewportSize(width=1280, height=800)) as (
        context,
        _,
    ):
        page = await context.new_page()
        await page.goto(url)
        await expect(page.locator("li.card")).to_have_count(3)
        await snap(page, "demo-endpoints-1280")
        await page.get_by_role("button", name="Delivery log").click()
        await expect(page.locator("tbody tr")).to_have_count(20)
        await snap(page, "demo-delivery-log-1280")
