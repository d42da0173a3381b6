"""The SSRF guard's address table and checks: pure, no network."""

from __future__ import annotations

import asyncio
import ipaddress
import socket

import aiohttp
import pytest
from aiohttp.abc import AbstractResolver, ResolveResult

from engine.delivery.ssrf import (
    BlockedAddressError,
    GuardedResolver,
    check_literal_host,
    is_public_address,
)

PUBLIC = [
    "93.184.216.34",
    "8.8.8.8",
    "1.1.1.1",
    "2606:4700::1111",
    "2a00:1450:4001:82a::200e",
    "::ffff:93.184.216.34",  # IPv4-mapped public
    "64:ff9b::5db8:d822",  # NAT64 of 93.184.216.34
    "2002:5db8:d822::1",  # 6to4 of 93.184.216.34
]

BLOCKED = [
    ("0.0.0.0", "unspecified"),  # noqa: S104 - a table entry, not a bind address
    ("0.1.2.3", "this network 0/8"),
    ("10.0.0.1", "private 10/8"),
    ("100.64.0.1", "carrier-grade NAT"),
    ("100.127.255.254", "carrier-grade NAT upper end"),
    ("127.0.0.1", "loopback"),
    ("127.255.255.254", "loopback upper end"),
    ("169.254.169.254", "cloud metadata, link-local"),
    ("172.16.0.1", "private 172.16/12"),
    ("172.31.255.254", "private 172.16/12 upper end"),
    ("192.0.0.8", "IETF protocol assignments"),
    ("192.0.2.1", "documentation TEST-NET-1"),
    ("192.88.99.1", "6to4 relay anycast"),
    ("192.168.1.1", "private 192.168/16"),
    ("198.18.0.1", "benchmarking"),
    ("198.19.255.254", "benchmarking upper end"),
    ("198.51.100.7", "documentation TEST-NET-2"),
    ("203.0.113.9", "documentation TEST-NET-3"),
    ("224.0.0.1", "multicast"),
    ("239.255.255.250", "multicast SSDP"),
    ("240.0.0.1", "reserved"),
    ("255.255.255.255", "broadcast"),
    ("::", "IPv6 unspecified"),
    ("::1", "IPv6 loopback"),
    ("fc00::1", "unique local"),
    ("fd12:3456::1", "unique local"),
    ("fe80::1", "link-local"),
    ("fe80::1%eth0", "link-local with zone"),
    ("fec0::1", "site-local"),
    ("ff02::1", "multicast"),
    ("100::1", "discard-only"),
    ("::ffff:127.0.0.1", "IPv4-mapped loopback"),
    ("::ffff:169.254.169.254", "IPv4-mapped metadata"),
    ("::ffff:10.0.0.1", "IPv4-mapped private"),
    ("::127.0.0.1", "IPv4-compatible loopback"),
    ("::10.0.0.1", "IPv4-compatible private"),
    ("64:ff9b::7f00:1", "NAT64 of loopback"),
    ("64:ff9b::a9fe:a9fe", "NAT64 of metadata"),
    ("2002:7f00:1::1", "6to4 of loopback"),
    ("2002:a00:1::1", "6to4 of private"),
    ("2001::1", "Teredo"),
    ("2001:0:4136:e378:8000:63bf:3fff:fdd2", "Teredo with embedded server"),
    ("2001:2::1", "IPv6 benchmarking"),
    ("2001:db8::1", "IPv6 documentation"),
    ("3fff::1", "IPv6 documentation RFC 9637"),
    ("4000::1", "outside global unicast"),
    ("100.100.100.200", "Alibaba Cloud metadata, carrier-grade NAT"),
    ("192.0.0.192", "Oracle Cloud metadata, IETF protocol assignments"),
    ("fd00:ec2::254", "AWS metadata over IPv6, unique local"),
    ("::ffff:100.100.100.200", "IPv4-mapped Alibaba metadata"),
    ("::ffff:0:7f00:1", "IPv4-translated (SIIT) loopback"),
    ("::ffff:0.0.0.0", "IPv4-mapped unspecified"),
    ("2002:a9fe:a9fe::1", "6to4 of metadata"),
    ("2002:c0a8:101::1", "6to4 of private 192.168/16"),
    ("64:ff9b::a00:1", "NAT64 of private"),
    ("64:ff9b::c0a8:101", "NAT64 of private 192.168/16"),
    ("64:ff9b:1::a9fe:a9fe", "local-use NAT64 of metadata"),
    ("2001:10::1", "ORCHID"),
    ("2001:20::1", "ORCHIDv2"),
    ("5f00::1", "SRv6 SIDs, outside global unicast"),
]


@pytest.mark.parametrize("address", PUBLIC)
def test_public_addresses_are_allowed(address: str) -> None:
    """Publicly routable unicast addresses, native or embedded, pass the guard."""
    assert is_public_address(ipaddress.ip_address(address))


@pytest.mark.parametrize(("address", "category"), BLOCKED)
def test_non_public_addresses_are_refused(address: str, category: str) -> None:
    """Every special-purpose category, including embedded IPv4 forms, is refused."""
    assert not is_public_address(ipaddress.ip_address(address)), category


@pytest.mark.parametrize("host", ["127.0.0.1", "10.0.0.1", "169.254.169.254", "::1", "[::1]"])
def test_check_literal_host_refuses_non_public_literals(host: str) -> None:
    """A non-public IP literal raises BlockedAddressError naming the host."""
    with pytest.raises(BlockedAddressError, match="not a public address"):
        check_literal_host(host, allow_private=False)


@pytest.mark.parametrize("host", ["93.184.216.34", "2606:4700::1111", "example.com", "localhost"])
def test_check_literal_host_leaves_public_literals_and_names(host: str) -> None:
    """Public literals pass, and names are left for the resolver to vet."""
    check_literal_host(host, allow_private=False)


@pytest.mark.parametrize("host", ["127.1", "2130706433", "0177.0.0.1", "127.0.0.1.", "::zz"])
def test_check_literal_host_rejects_non_canonical_literals(host: str) -> None:
    """Legacy numeric forms that map onto addresses in surprising ways are never vetted."""
    with pytest.raises(ValueError, match="not a canonical IP address"):
        check_literal_host(host, allow_private=False)


def test_check_literal_host_allows_everything_when_private_allowed() -> None:
    """With private networks allowed (tests, the demo) literals are not checked."""
    check_literal_host("127.0.0.1", allow_private=True)


class _FixedResolver(AbstractResolver):
    """Answers every lookup with fixed addresses, so the guard can be tested offline."""

    def __init__(self, *addresses: str) -> None:
        self.addresses = addresses
        self.closed = False

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        return [
            ResolveResult(
                hostname=host,
                host=address,
                port=port,
                family=socket.AF_INET6 if ":" in address else socket.AF_INET,
                proto=0,
                flags=socket.AI_NUMERICHOST,
            )
            for address in self.addresses
        ]

    async def close(self) -> None:
        self.closed = True


async def test_guarded_resolver_drops_non_public_results() -> None:
    """Private answers are dropped and only the vetted public ones are returned."""
    guard = GuardedResolver(lambda: False, _FixedResolver("10.0.0.1", "93.184.216.34", "::1"))
    results = await guard.resolve("mixed.example", 443)
    assert [r["host"] for r in results] == ["93.184.216.34"]


async def test_guarded_resolver_refuses_host_with_only_private_results() -> None:
    """A name resolving only to non-public addresses raises, naming host and address."""
    guard = GuardedResolver(lambda: False, _FixedResolver("169.254.169.254"))
    with pytest.raises(BlockedAddressError, match=r"rebind\.example.*169\.254\.169\.254"):
        await guard.resolve("rebind.example", 80)


async def test_guarded_resolver_consults_policy_on_every_lookup() -> None:
    """Flipping the policy callable changes the very next resolution."""
    allow = [True]
    guard = GuardedResolver(lambda: allow[0], _FixedResolver("127.0.0.1"))
    assert [r["host"] for r in await guard.resolve("localhost", 80)] == ["127.0.0.1"]
    allow[0] = False
    with pytest.raises(BlockedAddressError):
        await guard.resolve("localhost", 80)


async def test_guarded_resolver_closes_wrapped_resolver() -> None:
    """Closing the guard closes the resolver it wraps (aiohttp will not)."""
    inner = _FixedResolver()
    await GuardedResolver(lambda: False, inner).close()
    assert inner.closed


class _Rebinding(AbstractResolver):
    """Answers each lookup with the next answer in turn: a name that changes its mind."""

    def __init__(self, *answers: tuple[str, ...]) -> None:
        self._answers = list(answers)
        self.lookups = 0

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        answer = self._answers[min(self.lookups, len(self._answers) - 1)]
        self.lookups += 1
        return await _FixedResolver(*answer).resolve(host, port, family)

    async def close(self) -> None:
        pass


async def test_dns_rebinding_is_vetted_on_every_resolution() -> None:
    """A name that answered a public address and then a private one is refused the second time:
    an earlier answer never vouches for a later one, mixed answers keep only public addresses."""
    inner = _Rebinding(("93.184.216.34",), ("127.0.0.1",), ("93.184.216.34", "10.0.0.1"), ("::1",))
    guard = GuardedResolver(lambda: False, inner)
    assert [r["host"] for r in await guard.resolve("rebind.example", 443)] == ["93.184.216.34"]
    with pytest.raises(BlockedAddressError, match=r"127\.0\.0\.1"):
        await guard.resolve("rebind.example", 443)
    assert [r["host"] for r in await guard.resolve("rebind.example", 443)] == ["93.184.216.34"]
    with pytest.raises(BlockedAddressError, match="::1"):
        await guard.resolve("rebind.example", 443)
    assert inner.lookups == 4


async def test_a_rebound_name_gets_no_connection_through_aiohttp() -> None:
    """aiohttp connects only to what the guard returns: once the name rebinds to loopback, the
    request fails as a blocked address before any connection is made, although an earlier
    lookup of the same name was public."""
    inner = _Rebinding(("93.184.216.34",), ("127.0.0.1",))
    guard = GuardedResolver(lambda: False, inner)
    await guard.resolve("rebind.example", 80)  # the public answer: vetted, never connected to
    connections: list[object] = []

    async def accept(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        connections.append(writer)
        writer.close()

    server = await asyncio.start_server(accept, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    connector = aiohttp.TCPConnector(resolver=guard, use_dns_cache=False)
    try:
        async with aiohttp.ClientSession(connector=connector) as session:
            with pytest.raises(aiohttp.ClientConnectorError) as caught:
                await session.get(f"http://rebind.example:{port}/")
    finally:
        server.close()
        await server.wait_closed()
    assert isinstance(caught.value.os_error, BlockedAddressError)
    assert connections == []
