"""The request of one attempt: every header pinned, the body sent as signed, the URL unchanged."""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import hmac
import uuid
from datetime import UTC, datetime

import pytest

from engine.delivery.request import prepare_request
from engine.models import Delivery, EndpointConfig, Ordering, is_reserved_header

SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"  # noqa: S105 - Standard Webhooks test vector
OLD_SECRET = "whsec_" + base64.b64encode(bytes(range(32))).decode()
T = 1_700_000_000
BODY = b'{"id":"evt_7","type":"email.delivered","data":{"to":"a@example.com"}}'


def _delivery(attempt: int) -> Delivery:
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


def _endpoint(*secrets: str) -> EndpointConfig:
    return EndpointConfig(
        id=uuid.uuid4(),
        url="https://hooks.example.com/in?token=abc",
        secrets=secrets,
        max_in_flight=8,
        ordering=Ordering.DISPATCH,
        rate_limit_per_s=None,
    )


def _key(secret: str) -> bytes:
    return base64.b64decode(secret.removeprefix("whsec_"))


def _hex(secret: str, message: bytes) -> str:
    return hmac.new(_key(secret), message, hashlib.sha256).hexdigest()


def _b64(secret: str, message: bytes) -> str:
    return base64.b64encode(hmac.new(_key(secret), message, hashlib.sha256).digest()).decode()


def test_every_header_of_one_attempt_is_pinned() -> None:
    """One attempt carries exactly these headers, in this order, with these values."""
    prepared = prepare_request(_delivery(attempt=3), _endpoint(SECRET), timestamp=T)
    ours = f"{T}.".encode() + BODY
    standard = f"evt_7.{T}.".encode() + BODY
    assert list(prepared.headers.items()) == [
        ("X-MisarMail-Signature", f"t={T},v1={_hex(SECRET, ours)}"),
        ("webhook-id", "evt_7"),
        ("webhook-timestamp", str(T)),
        ("webhook-signature", f"v1,{_b64(SECRET, standard)}"),
        ("Content-Type", "application/json"),
        ("User-Agent", "MisarMail-Webhooks/0.1"),
        ("X-MisarMail-Event", "email.delivered"),
        ("X-MisarMail-Delivery", "42"),
        ("X-MisarMail-Attempt", "3"),
    ]


def test_body_and_url_are_sent_as_given() -> None:
    """The body is the delivery's exact bytes (what was signed) and the URL the endpoint's."""
    endpoint = _endpoint(SECRET)
    prepared = prepare_request(_delivery(attempt=1), endpoint, timestamp=T)
    assert prepared.body is BODY
    assert prepared.url == endpoint.url


def test_rotation_signs_with_every_secret_in_order() -> None:
    """During a rotation each signature header carries one signature per secret, in order."""
    prepared = prepare_request(_delivery(attempt=1), _endpoint(SECRET, OLD_SECRET), timestamp=T)
    ours = f"{T}.".encode() + BODY
    standard = f"evt_7.{T}.".encode() + BODY
    assert prepared.headers["X-MisarMail-Signature"] == (
        f"t={T},v1={_hex(SECRET, ours)},v1={_hex(OLD_SECRET, ours)}"
    )
    assert prepared.headers["webhook-signature"] == (
        f"v1,{_b64(SECRET, standard)} v1,{_b64(OLD_SECRET, standard)}"
    )


def test_attempt_and_timestamp_change_between_attempts_but_webhook_id_does_not() -> None:
    """A retry gets a fresh timestamp and attempt number; webhook-id stays the receiver's key."""
    first = prepare_request(_delivery(attempt=1), _endpoint(SECRET), timestamp=T)
    second = prepare_request(_delivery(attempt=2), _endpoint(SECRET), timestamp=T + 60)
    assert first.headers["webhook-id"] == second.headers["webhook-id"] == "evt_7"
    assert (first.headers["X-MisarMail-Attempt"], second.headers["X-MisarMail-Attempt"]) == (
        "1",
        "2",
    )
    assert second.headers["webhook-timestamp"] == str(T + 60)
    assert first.headers["X-MisarMail-Signature"] != second.headers["X-MisarMail-Signature"]


def test_an_endpoint_without_a_usable_secret_cannot_be_prepared() -> None:
    """A corrupt secret raises ValueError, which the actor records as an internal failure."""
    with pytest.raises(ValueError, match="whsec_"):
        prepare_request(_delivery(attempt=1), _endpoint("not-a-secret"), timestamp=T)


def test_every_header_we_set_is_reserved() -> None:
    """No header an attempt carries of its own can be taken by an endpoint's custom headers: each
    is in models.RESERVED_HEADER_NAMES or under one of its prefixes (which SQL refuses)."""
    prepared = prepare_request(_delivery(attempt=1), _endpoint(SECRET, OLD_SECRET), timestamp=T)
    assert [name for name in prepared.headers if not is_reserved_header(name)] == []


def test_custom_headers_come_first_and_the_timeout_is_the_endpoints() -> None:
    """An endpoint's custom headers are sent as given, before ours, which they cannot replace; the
    request carries the endpoint's timeout."""
    endpoint = dataclasses.replace(
        _endpoint(SECRET),
        headers={"Authorization": "Bearer k", "Content-Type": "text/plain"},
        timeout_s=3,
    )
    prepared = prepare_request(_delivery(attempt=1), endpoint, timestamp=T)
    assert next(iter(prepared.headers)) == "Authorization"
    assert prepared.headers["Authorization"] == "Bearer k"
    assert prepared.headers["Content-Type"] == "application/json"
    assert prepared.timeout_s == 3
    assert "Bearer k" not in repr(prepared)
    assert "Bearer k" not in repr(endpoint)
