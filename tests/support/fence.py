"""A socket-level fence: while it is up, no socket of this process connects beyond loopback.

Python raises the audit event ``socket.connect`` in every ``socket.connect`` and ``connect_ex``
before the system call, and an audit hook that raises aborts the call (PEP 578). aiohttp connects
through ``loop.sock_connect`` (aiohappyeyeballs), which on uvloop as on asyncio calls
``sock.connect``, so every connection of the engine's sender passes the fence. A test using it
should check that it really does (``LoopbackFence.allowed`` records what it let through), because
a connect made inside libuv would not be audited.

Audit hooks cannot be removed, so one hook is installed when this module is imported and it
consults the fences that are up; outside them it does nothing. Only IP literals on loopback and
Unix sockets pass: a private or a metadata address is refused before any packet leaves, and so is
a host name (which Python resolves before the audit event, so use literals).
"""

from __future__ import annotations

import ipaddress
import socket
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

__all__ = ["LoopbackFence", "OutsideLoopbackError", "loopback_only"]


class OutsideLoopbackError(PermissionError):
    """A connect beyond loopback, refused by the test's fence before any packet was sent."""


@dataclass
class LoopbackFence:
    """What the fence saw while it was up: addresses it let through and addresses it refused."""

    allowed: list[object] = field(default_factory=list)
    refused: list[object] = field(default_factory=list)


_fences_up: list[LoopbackFence] = []


def _is_loopback_literal(host: object) -> bool:
    try:
        address = ipaddress.ip_address(str(host).split("%", 1)[0])
    except ValueError:
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped.is_loopback
    return address.is_loopback


def _audit(event: str, args: tuple[Any, ...]) -> None:
    if event != "socket.connect" or not _fences_up:
        return
    sock, address = args
    fence = _fences_up[-1]
    family = getattr(sock, "family", None)
    if family == getattr(socket, "AF_UNIX", None) or (
        family in (socket.AF_INET, socket.AF_INET6)
        and isinstance(address, tuple)
        and _is_loopback_literal(address[0])
    ):
        fence.allowed.append(address)
        return
    fence.refused.append(address)
    raise OutsideLoopbackError(f"connect to {address!r} is outside the test's loopback fence")


sys.addaudithook(_audit)


@contextmanager
def loopback_only() -> Iterator[LoopbackFence]:
    """Refuse every connect beyond loopback until the block ends; yield what the fence saw.

    Fences nest: the innermost one decides and records, so a test can check the fence itself
    inside a module whose every test runs fenced.
    """
    fence = LoopbackFence()
    _fences_up.append(fence)
    try:
        yield fence
    finally:
        _fences_up.remove(fence)
