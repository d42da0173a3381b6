"""The loopback fence (tests/support/loopback_fence.py) itself: it refuses a connect beyond
loopback, and the sender's connections go through the call it audits, so the SSRF tests that
rely on it (test_sender, test_faults_security) cannot send beyond the machine.

These tests are not fenced by the ``loopback_fence`` fixture: they trip the fence on purpose.
"""

from __future__ import annotations

import asyncio
import socket
import sys
from collections.abc import AsyncIterator
from typing import Any

import pytest

from engine.delivery.http import Sender
from tests.support.loopback_fence import FenceBreach, loopback_only
from tests.support.receiver import Receiver

# What socket.connect was called with while a test watches: the audit event the fence decides on.
_watching: list[list[Any]] = []


def _watch_connects(event: str, args: tuple[Any, ...]) -> None:
    if event == "socket.connect" and _watching:
        _watching[-1].append(args[1])


sys.addaudithook(_watch_connects)


@pytest.fixture
async def sender() -> AsyncIterator[Sender]:
    """A sender allowed to reach the loopback receiver (guard off, http allowed)."""
    async with Sender(timeout_s=5.0, allow_http=True, allow_private_networks=True) as s:
        yield s


@pytest.mark.parametrize("address", [("169.254.169.254", 80), ("10.0.0.1", 80), ("192.0.2.1", 9)])
async def test_fence_refuses_a_connect_beyond_loopback(address: tuple[str, int]) -> None:
    """The fence refuses and reports a connect beyond loopback, through the event loop too, and
    lets a loopback connect through.

    UDP sockets: their connect only sets the peer and sends nothing, so even a broken fence
    could not make this test send a packet.
    """
    loop = asyncio.get_running_loop()
    with loopback_only() as refused:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            with pytest.raises(FenceBreach):
                sock.connect(address)
            sock.setblocking(False)
            with pytest.raises(FenceBreach):
                await loop.sock_connect(sock, address)
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            sock.connect(("127.0.0.1", 9))
    assert refused == [address[0], address[0]]


async def test_every_connection_of_the_sender_passes_the_fence(
    receiver: Receiver, sender: Sender
) -> None:
    """The sender connects through socket.connect, the call the fence audits, so the fence
    guards the guard tests (a connect made inside libuv would escape it)."""
    seen: list[Any] = []
    _watching.append(seen)
    try:
        assert (await sender.send(receiver.url("/hook"), b"{}", {})).status == 200
    finally:
        _watching.remove(seen)
    assert seen == [("127.0.0.1", receiver.port)]
