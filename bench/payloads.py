"""The bytes every workload sends: 1 KiB event payloads and the envelope the engine wraps them in.

Pure, so that the producer (which emits payloads) and the HTTP baseline (which POSTs whole
envelopes without any engine) send requests of the same size: the ratio between them then
measures the engine's own cost, not a difference in bodies.
"""

from __future__ import annotations

import base64
import json
import secrets
from typing import Any

PAYLOAD_BYTES = 1024
EVENT_TYPE = "email.sent"
# jsonb prints ``{"k": v, "k": v}``; sizing the payload in that form makes the envelope the engine
# sends carry exactly PAYLOAD_BYTES of data.
_JSONB_SEPARATORS = (", ", ": ")


def payload(i: int) -> dict[str, Any]:
    """Event ``i``'s payload: an email event whose jsonb text is exactly PAYLOAD_BYTES long.

    Numbers are zero-padded so every payload has the same size whatever ``i`` is.
    """
    data: dict[str, Any] = {
        "email_id": f"em_{i:012d}",
        "message_id": f"<{i:012d}@mail.misarmail.test>",
        "to": f"user{i % 100_000:06d}@example.test",
        "subject": "Your weekly digest",
        "padding": "",
    }
    fill = PAYLOAD_BYTES - len(json.dumps(data, separators=_JSONB_SEPARATORS))
    if fill < 0:
        raise ValueError(f"payload {i} is over {PAYLOAD_BYTES} bytes without padding")
    data["padding"] = "x" * fill
    return data


def payload_text(i: int) -> str:
    """``payload(i)`` as the JSON text ``webhooks.emit`` takes for its jsonb argument."""
    return json.dumps(payload(i), separators=_JSONB_SEPARATORS)


def envelope(i: int, *, account_id: str = "acct_0") -> bytes:
    """The body the engine would POST for event ``i`` (the shape ``webhooks.claim_v2`` builds)."""
    head = {
        "id": f"evt_{i}",
        "type": EVENT_TYPE,
        "created_at": "2025-01-01T00:00:00.000000Z",
        "account_id": account_id,
    }
    text = json.dumps(head, separators=(",", ":"))[:-1] + ',"data":' + payload_text(i) + "}"
    return text.encode()


def new_secret() -> str:
    """A fresh endpoint secret in the engine's format (``whsec_`` + base64 of 32 bytes)."""
    return "whsec_" + base64.b64encode(secrets.token_bytes(32)).decode("ascii")


# What app.email_event_webhook (sql/examples/misarmail_app.sql) adds to a row's details to make
# the event payload, with values of the usual length (a 7-digit row id, a timestamp with
# microseconds): the row's details are padded so that the payload comes out at PAYLOAD_BYTES, give
# or take the few characters by which those values vary.
_TRIGGER_FIELDS: dict[str, Any] = {
    "email_event_id": 1_000_000,
    "recipient": "user000000@example.test",
    "campaign_id": "cmp_000000",
    "occurred_at": "2026-01-01T00:00:00.000000+00:00",
}


def app_row(i: int, account_id: str) -> tuple[str, str, str, str]:
    """Row ``i`` of ``app.email_events`` for an account: (account_id, recipient, campaign_id,
    details as JSON text); its trigger emits an ``email.sent`` event of about PAYLOAD_BYTES."""
    details: dict[str, Any] = {
        "message_id": f"<{i:012d}@mail.misarmail.test>",
        "subject": "Your weekly digest",
        "padding": "",
    }
    merged = {**_TRIGGER_FIELDS, **details}
    details["padding"] = "x" * (
        PAYLOAD_BYTES - len(json.dumps(merged, separators=_JSONB_SEPARATORS))
    )
    text = json.dumps(details, separators=_JSONB_SEPARATORS)
    return account_id, f"user{i % 100_000:06d}@example.test", f"cmp_{i % 1000:06d}", text
