"""Every header and the signature of one attempt, assembled in one place (DESIGN §5, §6).

As Svix's ``generate_msg_headers``: the request is built before the sender sees it, so the
sender only moves bytes and the headers of an attempt have one source. Pure: no I/O; the clock
is passed in.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from engine.models import DEFAULT_TIMEOUT_S, Delivery, EndpointConfig
from engine.signing import sign

__all__ = ["USER_AGENT", "PreparedRequest", "prepare_request"]

USER_AGENT = "MisarMail-Webhooks/0.1"


@dataclass(frozen=True, slots=True)
class PreparedRequest:
    """What one attempt POSTs: the endpoint's URL, the exact body bytes signed, every header."""

    url: str
    body: bytes
    headers: Mapping[str, str] = field(repr=False)  # custom header values are secrets
    timeout_s: float = DEFAULT_TIMEOUT_S


def prepare_request(
    delivery: Delivery, endpoint: EndpointConfig, *, timestamp: int
) -> PreparedRequest:
    """The request of ``delivery``'s current attempt to ``endpoint``, signed at ``timestamp``,
    with the endpoint's custom headers and its request timeout.

    ``timestamp`` (unix seconds) is fresh on every attempt, so a retry is not refused as a replay;
    the signatures cover ``delivery.body`` exactly, which is sent unchanged. Raises ValueError when
    the endpoint has no usable secret (a configuration error the caller records as a failure).
    """
    signature_headers = sign(
        endpoint.secrets, delivery.body, webhook_id=delivery.webhook_id, timestamp=timestamp
    )
    # Custom headers first: SQL refuses the names set here (models.RESERVED_HEADER_NAMES), and
    # ours are written over them anyway.
    headers = {
        **endpoint.headers,
        **signature_headers,
        "Content-Type": "application/json",
        "User-Agent": USER_AGENT,
        "X-MisarMail-Event": delivery.event_type,
        "X-MisarMail-Delivery": str(delivery.id),
        "X-MisarMail-Attempt": str(delivery.attempt),
    }
    return PreparedRequest(endpoint.url, delivery.body, headers, endpoint.timeout_s)
