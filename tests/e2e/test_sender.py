"""Sender against the real scripted Receiver over loopback: every result kind, no mocks.

Every test runs inside the socket-level loopback fence (tests/support/loopback_fence.py): the
guard tests aim at private and metadata addresses, and a regressed guard must meet the fence, not
the network. tests/e2e/test_loopback_fence.py checks the fence itself.
"""

from __future__ import annotations

import asyncio
import ssl
import time
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime

import pytest
import trustme

from engine.delivery.http import Sender
from engine.delivery.request import prepare_request
from engine.models import Delivery, EndpointConfig, ErrorKind, Ordering
from engine.signing import verify_signature
from tests.support.receiver import MIB, Receiver, Reply

# For tests about the deadline itself; others use a roomy one so a busy machine cannot flake them.
TIMEOUT_S = 0.5
ROOMY_TIMEOUT_S = 5.0
# Generous: the machine is shared and noisy; the point is "bounded", not "fast".
SLACK_S = 5.0
BODY = b'{"id":"evt_7","type":"email.delivered","data":{}}'
SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"  # noqa: S105 - the Standard Webhooks test secret


def make_delivery(attempt: int = 1) -> Delivery:
    """A small delivery as the dispatcher would claim it."""
    return Delivery(
        id=42,
        lease=uuid.uuid4(),
        attempt=attempt,
        endpoint_id=uuid.uuid4(),
        event_id=7,
        event_type="email.delivered",
        body=BODY,
        created_at=datetime.now(UTC),
    )


# A regressed SSRF guard must meet the fence, never the network (tests/e2e/conftest.py).
pytestmark = pytest.mark.usefixtures("loopback_fence")


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    """A plain-HTTP receiver on 127.0.0.1."""
    async with Receiver() as r:
        yield r


@pytest.fixture
async def sender() -> AsyncIterator[Sender]:
    """A sender allowed to reach the loopback receiver (guard off, http allowed)."""
    async with Sender(timeout_s=ROOMY_TIMEOUT_S, allow_http=True, allow_private_networks=True) as s:
        yield s


@pytest.fixture
async def guarded_sender() -> AsyncIterator[Sender]:
    """A sender with the SSRF guard on, as in production (http allowed to isolate the guard)."""
    async with Sender(
        timeout_s=ROOMY_TIMEOUT_S, allow_http=True, allow_private_networks=False
    ) as s:
        yield s


async def test_2xx_succeeds_with_headers_body_and_excerpt(
    receiver: Receiver, sender: Sender
) -> None:
    """A 200 is a success, and the receiver gets the exact body and the documented headers."""
    receiver.script("/hook", Reply(status=200, body=b"thanks"))
    delivery = make_delivery(attempt=3)
    endpoint = EndpointConfig(
        id=delivery.endpoint_id,
        url=receiver.url("/hook"),
        secrets=(SECRET,),
        max_in_flight=1,
        ordering=Ordering.DISPATCH,
        rate_limit_per_s=None,
    )
    prepared = prepare_request(delivery, endpoint, timestamp=int(time.time()))
    result = await sender.send(prepared.url, prepared.body, prepared.headers)
    assert (result.status, result.error_kind, result.error_message) == (200, None, None)
    assert result.excerpt == "thanks"
    [request] = await receiver.wait_for(1, path="/hook")
    assert request.method == "POST"
    assert request.body == delivery.body
    assert request.headers["Content-Type"] == "application/json"
    assert request.headers["User-Agent"] == "MisarMail-Webhooks/0.1"
    assert request.headers["X-MisarMail-Event"] == "email.delivered"
    assert request.headers["X-MisarMail-Delivery"] == "42"
    assert request.headers["X-MisarMail-Attempt"] == "3"
    assert request.headers["webhook-id"] == "evt_7"
    verify_signature(request.body, request.headers["X-MisarMail-Signature"], SECRET)


async def test_500_is_an_http_status_failure(receiver: Receiver, sender: Sender) -> None:
    """A 500 fails with HTTP_STATUS, keeping the status and the body excerpt."""
    receiver.script("/hook", Reply(status=500, body=b"boom"))
    result = await sender.send(receiver.url("/hook"), BODY, {})
    assert (result.status, result.error_kind) == (500, ErrorKind.HTTP_STATUS)
    assert result.excerpt == "boom"
    assert result.retry_after_s is None


async def test_script_replies_in_order_and_repeats_the_last(
    receiver: Receiver, sender: Sender
) -> None:
    """Scripted replies are consumed in order, the last one repeating, over one shared session."""
    receiver.script("/hook", Reply(status=500), Reply(status=204))
    statuses = [(await sender.send(receiver.url("/hook"), BODY, {})).status]
    statuses += [(await sender.send(receiver.url("/hook"), BODY, {})).status]
    statuses += [(await sender.send(receiver.url("/hook"), BODY, {})).status]
    assert statuses == [500, 204, 204]
    assert len(await receiver.wait_for(3, path="/hook")) == 3


async def test_redirect_is_not_followed(receiver: Receiver, sender: Sender) -> None:
    """A 302 fails with REDIRECT naming the Location, and the target is never requested."""
    receiver.script("/hook", Reply.redirect(receiver.url("/elsewhere")))
    result = await sender.send(receiver.url("/hook"), BODY, {})
    assert (result.status, result.error_kind) == (302, ErrorKind.REDIRECT)
    assert result.error_message is not None
    assert receiver.url("/elsewhere") in result.error_message
    await asyncio.sleep(0.1)  # room for a (wrongly) followed redirect to arrive
    assert [r.path for r in receiver.received] == ["/hook"]


async def test_hanging_endpoint_times_out(receiver: Receiver) -> None:
    """An endpoint that never answers yields TIMEOUT, bounded by the sender's timeout."""
    receiver.script("/hook", Reply(delay_s=60))
    async with Sender(timeout_s=TIMEOUT_S, allow_http=True, allow_private_networks=True) as sender:
        started = time.monotonic()
        result = await sender.send(receiver.url("/hook"), BODY, {})
        elapsed = time.monotonic() - started
    assert (result.status, result.error_kind) == (0, ErrorKind.TIMEOUT)
    assert TIMEOUT_S * 0.9 <= elapsed < TIMEOUT_S + SLACK_S


async def test_slow_drip_body_is_bounded_by_the_timeout(receiver: Receiver) -> None:
    """Headers then one byte per 0.2 s cannot stretch the attempt past the deadline."""
    body = b"d" * 1000  # 200 s at this pace
    receiver.script("/hook", Reply(status=200, body=body, drip_s=0.2))
    timeout_s = 1.0  # long enough for the headers to arrive on a busy machine
    async with Sender(timeout_s=timeout_s, allow_http=True, allow_private_networks=True) as sender:
        started = time.monotonic()
        result = await sender.send(receiver.url("/hook"), BODY, {})
        assert time.monotonic() - started < timeout_s + SLACK_S
    # The status line arrived in time, so it decides; the excerpt is what dripped in.
    assert result.status == 200
    assert result.excerpt is not None
    assert 0 < len(result.excerpt) < len(body)
    assert body.decode().startswith(result.excerpt)


async def test_endless_body_is_capped_at_the_excerpt(receiver: Receiver) -> None:
    """An endless streamed body is read only up to excerpt_bytes, then the connection is cut."""
    receiver.script("/hook", Reply(status=200, endless=True))
    async with Sender(
        timeout_s=ROOMY_TIMEOUT_S, allow_http=True, allow_private_networks=True, excerpt_bytes=1000
    ) as sender:
        started = time.monotonic()
        result = await sender.send(receiver.url("/hook"), BODY, {})
        assert time.monotonic() - started < ROOMY_TIMEOUT_S + SLACK_S
    assert result.status == 200
    assert result.excerpt == "x" * 1000


async def test_huge_body_excerpt_is_capped(receiver: Receiver, sender: Sender) -> None:
    """A 10 MiB body yields an excerpt of exactly excerpt_bytes (16 KiB by default)."""
    receiver.script("/hook", Reply(status=500, extra_body_bytes=10 * MIB))
    result = await sender.send(receiver.url("/hook"), BODY, {})
    assert (result.status, result.error_kind) == (500, ErrorKind.HTTP_STATUS)
    assert result.excerpt == "x" * 16384


@pytest.mark.parametrize(
    ("reply", "expected_s"),
    [
        (Reply.retry_after("7"), 7.0),
        (Reply.retry_after("120", status=503), 120.0),
        (Reply.retry_after("Wed, 21 Oct 2015 07:28:00 GMT"), 0.0),  # a date in the past
        (Reply.retry_after("soon"), None),
        (Reply(status=500, headers={"Retry-After": "7"}), None),  # only 429 and 503 count
    ],
)
async def test_retry_after_is_parsed_on_429_and_503(
    receiver: Receiver, sender: Sender, reply: Reply, expected_s: float | None
) -> None:
    """Retry-After is parsed into seconds on 429/503 and ignored on other statuses."""
    receiver.script("/hook", reply)
    result = await sender.send(receiver.url("/hook"), BODY, {})
    assert (result.status, result.error_kind) == (reply.status, ErrorKind.HTTP_STATUS)
    assert result.retry_after_s == expected_s


async def test_connection_reset_is_a_transport_failure(receiver: Receiver, sender: Sender) -> None:
    """A TCP reset instead of a response yields status 0 and CONNECT or DISCONNECTED."""
    receiver.script("/hook", Reply(reset=True))
    result = await sender.send(receiver.url("/hook"), BODY, {})
    assert result.status == 0
    assert result.error_kind in {ErrorKind.CONNECT, ErrorKind.DISCONNECTED}


async def test_invalid_http_is_a_protocol_error(receiver: Receiver, sender: Sender) -> None:
    """Bytes that are not an HTTP response yield PROTOCOL, quoting none of them."""
    receiver.script("/hook", Reply(raw=b"SECRET-LOOKING GARBAGE\r\n\r\n"))
    result = await sender.send(receiver.url("/hook"), BODY, {})
    assert (result.status, result.error_kind) == (0, ErrorKind.PROTOCOL)
    assert result.error_message is not None
    assert "GARBAGE" not in result.error_message


async def test_enormous_headers_are_a_protocol_error(receiver: Receiver, sender: Sender) -> None:
    """A 64 KiB response header is refused by the parser as PROTOCOL, not buffered."""
    receiver.script("/hook", Reply(header_bytes=64 * 1024))
    result = await sender.send(receiver.url("/hook"), BODY, {})
    assert (result.status, result.error_kind) == (0, ErrorKind.PROTOCOL)
    assert result.error_message is not None
    assert len(result.error_message) <= 200


@pytest.mark.parametrize(
    "host", ["127.0.0.1:{port}", "[::1]:{port}", "[::ffff:127.0.0.1]:{port}", "localhost:{port}"]
)
async def test_guard_refuses_loopback(
    receiver: Receiver, guarded_sender: Sender, host: str
) -> None:
    """Loopback literals (v4, v6, IPv4-mapped) and the name localhost never get a request."""
    url = f"http://{host.format(port=receiver.port)}/hook"
    result = await guarded_sender.send(url, BODY, {})
    assert (result.status, result.error_kind) == (0, ErrorKind.BLOCKED_ADDRESS)
    await asyncio.sleep(0.1)
    assert receiver.received == []


@pytest.mark.parametrize("host", ["10.0.0.1", "169.254.169.254", "[fd00::1]", "[fe80::1]"])
async def test_guard_refuses_private_literals_before_connecting(
    guarded_sender: Sender, host: str
) -> None:
    """Private and metadata literals are refused by the pre-connect check, never dialled.

    BLOCKED_ADDRESS for a literal can only come from the check that runs before aiohttp is
    called (aiohttp skips the resolver for literals); a dial would end as CONNECT or TIMEOUT.
    """
    result = await guarded_sender.send(f"https://{host}/latest/meta-data/", BODY, {})
    assert (result.status, result.error_kind) == (0, ErrorKind.BLOCKED_ADDRESS)
    assert result.error_message is not None
    assert host.strip("[]") in result.error_message


async def test_guard_off_reaches_localhost(receiver: Receiver, sender: Sender) -> None:
    """With private networks allowed, the name localhost resolves and is delivered to."""
    result = await sender.send(f"http://localhost:{receiver.port}/hook", BODY, {})
    assert result.status == 200
    assert len(await receiver.wait_for(1, path="/hook")) == 1


async def test_tightened_policy_applies_to_cached_dns_and_pooled_connections(
    receiver: Receiver, sender: Sender
) -> None:
    """Turning private networks off refuses the next send even with a warm pool and DNS cache."""
    url = f"http://localhost:{receiver.port}/hook"
    assert (await sender.send(url, BODY, {})).status == 200
    sender.update_policy(allow_http=True, allow_private_networks=False)
    result = await sender.send(url, BODY, {})
    assert result.error_kind is ErrorKind.BLOCKED_ADDRESS
    sender.update_policy(allow_http=True, allow_private_networks=True)
    assert (await sender.send(url, BODY, {})).status == 200
    assert len(receiver.received) == 2


async def test_plain_http_is_refused_unless_allowed(receiver: Receiver) -> None:
    """With allow_http off an http:// URL fails as INSECURE_URL before any connection."""
    async with Sender(timeout_s=ROOMY_TIMEOUT_S, allow_private_networks=True) as sender:
        result = await sender.send(receiver.url("/hook"), BODY, {})
        assert (result.status, result.error_kind) == (0, ErrorKind.INSECURE_URL)
        sender.update_policy(allow_http=True, allow_private_networks=True)
        assert (await sender.send(receiver.url("/hook"), BODY, {})).status == 200
    assert len(receiver.received) == 1


@pytest.mark.parametrize("url", ["not a url", "ftp://example.com/hook", "https://127.1/hook"])
async def test_unusable_urls_are_invalid(sender: Sender, url: str) -> None:
    """URLs without an http(s) scheme and host, or with non-canonical IP hosts, are INVALID_URL."""
    result = await sender.send(url, BODY, {})
    assert (result.status, result.error_kind) == (0, ErrorKind.INVALID_URL)


async def test_untrusted_certificate_is_a_tls_failure(sender: Sender) -> None:
    """A receiver with a certificate from an unknown CA fails as TLS, and gets no request."""
    ca = trustme.CA()
    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1", "localhost").configure_cert(server_context)
    async with Receiver(ssl_context=server_context) as tls_receiver:
        result = await sender.send(tls_receiver.url("/hook"), BODY, {})
        assert (result.status, result.error_kind) == (0, ErrorKind.TLS)
        assert result.error_message is not None
        assert "certificate" in result.error_message
        assert tls_receiver.received == []


async def test_cancellation_propagates(receiver: Receiver, sender: Sender) -> None:
    """Cancelling a send raises CancelledError instead of turning it into an Outcome."""
    receiver.script("/hook", Reply(delay_s=60))
    task = asyncio.create_task(sender.send(receiver.url("/hook"), BODY, {}))
    await receiver.wait_for(1, path="/hook")
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


async def test_receiver_tracks_concurrency(receiver: Receiver, sender: Sender) -> None:
    """Concurrent sends are seen as concurrent by the receiver, per path and overall."""
    receiver.script("/slow", Reply(delay_s=60))
    slow = [asyncio.create_task(sender.send(receiver.url("/slow"), BODY, {})) for _ in range(3)]
    try:
        arrived = await receiver.wait_for(3, path="/slow")
        assert (await sender.send(receiver.url("/fast"), BODY, {})).status == 200
    finally:
        for task in slow:
            task.cancel()
        await asyncio.gather(*slow, return_exceptions=True)
    assert sorted(r.concurrency for r in arrived) == [1, 2, 3]
    assert receiver.max_concurrency("/slow") == 3
    assert receiver.max_concurrency("/fast") == 1
    assert receiver.max_concurrency() == 4
