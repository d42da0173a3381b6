"""A socket-level fence: while it is up, this process connects to and sends to loopback only.

Tests that point the engine at non-public addresses (10.0.0.1, 169.254.169.254) rely on its SSRF
guard to send nothing; if the guard regressed, they would send real traffic beyond the machine.
The fence is a Python audit hook (PEP 578) on ``socket.connect`` and ``socket.sendto``: every
socket the engine opens goes through them (aiohttp hands uvloop a socket it connects itself), and
an exception raised by the hook aborts the call before any packet leaves. An audit hook cannot be
removed, so one is installed for the process and consults the fences that are up; Unix sockets
(the embedded Postgres) are not IP and pass.
"""

from __future__ import annotations

import ipaddress
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

__all__ = ["FenceBreach", "loopback_only"]


class FenceBreach(PermissionError):
    """A connection beyond loopback was attempted while the test's fence was up."""


_fences: list[list[str]] = []
_installed = False


def _is_loopback(host: str) -> bool:
    try:
        address = ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        return False  # a name: connect() takes addresses only, so refuse what cannot be vetted
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return address.is_loopback


def _audit(event: str, args: tuple[Any, ...]) -> None:
    if not _fences or event not in ("socket.connect", "socket.sendto"):
        return
    target = args[1]
    if not isinstance(target, tuple) or _is_loopback(str(target[0])):
        return
    for refused in _fences:
        refused.append(str(target[0]))
    raise FenceBreach(f"{event} to {target[0]} is outside the test's loopback fence")


@contextmanager
def loopback_only() -> Iterator[list[str]]:
    """Refuse every IP connect or sendto beyond loopback while inside; yields the list of the
    addresses refused, for the test to assert empty (the code under test never tried)."""
    global _installed
    if not _installed:
        sys.addaudithook(_audit)
        _installed = True
    refused: list[str] = []
    _fences.append(refused)
    try:
        yield refused
    finally:
        _fences.remove(refused)
