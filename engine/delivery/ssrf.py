"""The SSRF guard: webhooks go to public addresses only (DESIGN §5).

Endpoint URLs are written by customers, so without a guard the engine would POST wherever they
point: the cloud metadata service (169.254.169.254), the database next door, localhost admin
ports. Checking the URL text is not enough (a public name can resolve to 10.0.0.1, and to
something else a second later: DNS rebinding), so the check sits in the resolver aiohttp connects
through. aiohttp connects to exactly the addresses its resolver returned, so the address that was
checked is the address that is used. aiohttp skips the resolver for IP literals, which is why
:func:`check_literal_host` exists and the sender calls it before every request.

The address test is an allow-list: only IPv4 outside every special-purpose block and IPv6 global
unicast (2000::/3) outside its special-purpose blocks are public. Addresses that embed an IPv4
address (mapped, compatible, NAT64, 6to4) are judged by the embedded one, since that is where the
packets end up.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Callable
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network

from aiohttp.abc import AbstractResolver, ResolveResult
from aiohttp.resolver import DefaultResolver

__all__ = ["BlockedAddressError", "GuardedResolver", "check_literal_host", "is_public_address"]

# IANA IPv4 special-purpose registry (RFC 6890 and successors), plus multicast and reserved space.
_BLOCKED_V4 = tuple(
    IPv4Network(net)
    for net in (
        "0.0.0.0/8",  # "this network", includes the unspecified address
        "10.0.0.0/8",  # private
        "100.64.0.0/10",  # carrier-grade NAT
        "127.0.0.0/8",  # loopback
        "169.254.0.0/16",  # link-local, includes cloud metadata 169.254.169.254
        "172.16.0.0/12",  # private
        "192.0.0.0/24",  # IETF protocol assignments
        "192.0.2.0/24",  # documentation (TEST-NET-1)
        "192.88.99.0/24",  # deprecated 6to4 relay anycast
        "192.168.0.0/16",  # private
        "198.18.0.0/15",  # benchmarking
        "198.51.100.0/24",  # documentation (TEST-NET-2)
        "203.0.113.0/24",  # documentation (TEST-NET-3)
        "224.0.0.0/4",  # multicast
        "240.0.0.0/4",  # reserved, includes broadcast 255.255.255.255
    )
)

_GLOBAL_UNICAST_V6 = IPv6Network("2000::/3")
# Special-purpose blocks inside 2000::/3; everything outside 2000::/3 (loopback, ULA fc00::/7,
# link-local fe80::/10, site-local fec0::/10, multicast ff00::/8, discard 100::/64, reserved) is
# refused by the allow-list itself.
_BLOCKED_V6 = tuple(
    IPv6Network(net)
    for net in (
        "2001::/23",  # IETF protocol assignments: Teredo 2001::/32, benchmarking, ORCHID
        "2001:db8::/32",  # documentation
        "3fff::/20",  # documentation (RFC 9637)
    )
)
_IPV4_MAPPED = IPv6Network("::ffff:0:0/96")
_IPV4_COMPATIBLE = IPv6Network("::/96")
_NAT64 = IPv6Network("64:ff9b::/96")


class BlockedAddressError(OSError):
    """The SSRF guard refused every address of a host.

    An ``OSError`` because aiohttp treats resolver failures as ``OSError`` and wraps them in
    ``ClientConnectorDNSError`` (as ``os_error``), which is where the sender finds it again.
    """


def is_public_address(ip: IPv4Address | IPv6Address) -> bool:
    """Whether a webhook may be sent to ``ip``: true only for publicly routable unicast."""
    if isinstance(ip, IPv4Address):
        return not any(ip in net for net in _BLOCKED_V4)
    embedded = _embedded_ipv4(ip)
    if embedded is not None:
        return is_public_address(embedded)
    if ip not in _GLOBAL_UNICAST_V6 or any(ip in net for net in _BLOCKED_V6):
        return False
    # Belt and braces: Python's registry copy, for blocks added after this list was written.
    return ip.is_global


def _embedded_ipv4(ip: IPv6Address) -> IPv4Address | None:
    """The IPv4 address packets to ``ip`` really go to, for the forms that embed one."""
    if ip in _IPV4_MAPPED:
        return ip.ipv4_mapped
    if ip in _NAT64:
        return IPv4Address(int(ip) & 0xFFFFFFFF)
    if ip.sixtofour is not None:
        return ip.sixtofour
    if ip in _IPV4_COMPATIBLE:
        # Deprecated IPv4-compatible form ::a.b.c.d; :: and ::1 land in 0.0.0.0/8 and are refused.
        return IPv4Address(int(ip))
    return None


def _looks_like_ip(host: str) -> bool:
    """aiohttp's own test for "skip the resolver, this is an IP literal" (helpers.is_ip_address)."""
    return ":" in host or host.replace(".", "").isdigit()


def check_literal_host(host: str, allow_private: bool) -> None:
    """Refuse an IP-literal URL host that is not public; names are left to :class:`GuardedResolver`.

    Raises :class:`BlockedAddressError` for a non-public literal, and ``ValueError`` for a host that
    aiohttp would treat as a literal but that is not a canonical address (``127.1``,
    ``2130706433``): such forms map onto addresses in surprising ways, so they are never vetted.
    """
    if allow_private or not _looks_like_ip(host):
        return
    try:
        ip = ipaddress.ip_address(host.removeprefix("[").removesuffix("]"))
    except ValueError:
        raise ValueError(f"{host} is not a canonical IP address") from None
    if not is_public_address(ip):
        raise BlockedAddressError(f"{host} is not a public address")


class GuardedResolver(AbstractResolver):
    """An aiohttp resolver that returns only public addresses unless private ones are allowed.

    ``allow_private`` is a callable consulted on every resolution, so a policy change applies to
    the next connection without rebuilding the resolver. Non-public results are dropped; if none
    remain, :class:`BlockedAddressError` names the host and the first refused address. Results are
    vetted before aiohttp's DNS cache stores them, so cached answers are vetted too (the sender
    starts a fresh connector when the policy tightens).
    """

    def __init__(
        self,
        allow_private: Callable[[], bool],
        resolver: AbstractResolver | None = None,
    ) -> None:
        self._allow_private = allow_private
        self._resolver = resolver if resolver is not None else DefaultResolver()

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        results = await self._resolver.resolve(host, port, family)
        if self._allow_private():
            return results
        public = [r for r in results if is_public_address(ipaddress.ip_address(r["host"]))]
        if results and not public:
            raise BlockedAddressError(f"{host} resolves to non-public address {results[0]['host']}")
        return public

    async def close(self) -> None:
        await self._resolver.close()
