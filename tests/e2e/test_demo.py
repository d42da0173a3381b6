"""`misar-webhooks demo` run as a user would: a subprocess on a machine with only Python."""

from __future__ import annotations

import asyncio
import os
import re
import socket
import sys

import pytest


def _port_open(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(1)
        return sock.connect_ex(("127.0.0.1", port)) == 0


@pytest.mark.slow
@pytest.mark.timeout(180)
async def test_demo_delivers_everything_and_leaves_nothing_running() -> None:
    """The demo exits 0, shows retries and the delivery log, and stops what it started."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("WEBHOOKS_")}
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "engine", "demo",
        env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
    )  # fmt: skip
    try:
        out, _ = await asyncio.wait_for(proc.communicate(), timeout=150)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    text = out.decode()
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
