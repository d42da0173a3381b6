"""Signing webhook bodies, and the helper receivers use to verify them (DESIGN §6).

Pure: no I/O. We send two signature schemes over the same bytes. ``X-MisarMail-Signature``
(``t=<unix s>,v1=<hex>``) is ours; the ``webhook-*`` headers follow Standard Webhooks so
receivers can use an existing library in any language. During a secret rotation every active
secret signs, so a receiver holding either the old or the new secret accepts the delivery.
"""

from __future__ import annotations

import base64
import binascii
import functools
import hmac
import re
import time
from collections.abc import Sequence

SECRET_PREFIX = "whsec_"  # noqa: S105 - the public prefix of every secret, not a secret
SIGNATURE_HEADER = "X-MisarMail-Signature"
_MALFORMED = f"malformed {SIGNATURE_HEADER} header"
DEFAULT_TOLERANCE_S = 300

# A hex SHA-256 digest; anything else under v1= is a malformed header, not merely a wrong signature.
_HEX_DIGEST = re.compile(r"[0-9a-fA-F]{64}")
# Unix seconds. The length bound keeps int() cheap on hostile input.
_UNIX_SECONDS = re.compile(r"[0-9]{1,15}")


class SignatureError(Exception):
    """A webhook signature did not verify; the message says why."""


@functools.lru_cache(maxsize=1024)
def secret_key(secret: str) -> bytes:
    """Return the HMAC key of a ``whsec_`` secret: the base64-decoded bytes after the prefix.

    Cached because the same few secrets sign every attempt of an endpoint. Unpadded base64 is
    accepted, as Standard Webhooks libraries do. A bad secret is a configuration error, not a bad
    delivery, so it raises ValueError rather than SignatureError.
    """
    if not secret.startswith(SECRET_PREFIX):
        raise ValueError(f"webhook secret must start with {SECRET_PREFIX!r}")
    encoded = secret.removeprefix(SECRET_PREFIX)
    try:
        key = base64.b64decode(encoded + "=" * (-len(encoded) % 4), validate=True)
    except binascii.Error as exc:
        raise ValueError("webhook secret is not valid base64 after the prefix") from exc
    if not key:
        raise ValueError("webhook secret is empty")
    return key


def _hmac(secret: str, message: bytes) -> bytes:
    # hmac.digest is OpenSSL's one-shot HMAC: the same bytes as hmac.new(...).digest() without
    # building a Python HMAC object twice per attempt.
    return hmac.digest(secret_key(secret), message, "sha256")


def sign(secrets: Sequence[str], body: bytes, *, webhook_id: str, timestamp: int) -> dict[str, str]:
    """Return the signature headers for ``body``, one signature per secret in the order given.

    ``body`` must be the exact bytes sent: receivers verify the raw body, so re-serialising it
    after signing breaks every signature. ``webhook_id`` is stable per event and endpoint (the
    receiver's dedup key) while ``timestamp`` is fresh on every attempt.
    """
    if not secrets:
        raise ValueError("at least one secret is needed to sign")
    ours = f"{timestamp}.".encode() + body
    standard = f"{webhook_id}.{timestamp}.".encode() + body
    v1 = "".join(f",v1={_hmac(s, ours).hex()}" for s in secrets)
    standard_sigs = " ".join(
        "v1," + base64.b64encode(_hmac(s, standard)).decode("ascii") for s in secrets
    )
    return {
        SIGNATURE_HEADER: f"t={timestamp}{v1}",
        "webhook-id": webhook_id,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": standard_sigs,
    }


def _pairs(header: str) -> list[tuple[str, str]]:
    """Split ``k=v, k=v`` into stripped pairs; empty parts (a trailing comma) are skipped."""
    pairs: list[tuple[str, str]] = []
    for part in header.split(","):
        if not part.strip():
            continue
        key, eq, value = (p.strip() for p in part.partition("="))
        if not eq or not key:
            raise SignatureError(f"{_MALFORMED}: expected comma-separated key=value parts")
        pairs.append((key, value))
    return pairs


def _parse(header: str) -> tuple[int, list[bytes]]:
    """Return the header's timestamp and v1 digests; unknown schemes such as v0= are ignored."""
    if not header.strip():
        raise SignatureError(f"missing {SIGNATURE_HEADER} header")
    pairs = _pairs(header)
    timestamps = [value for key, value in pairs if key == "t"]
    signatures = [value for key, value in pairs if key == "v1"]
    if not timestamps:
        raise SignatureError(f"{_MALFORMED}: no t= timestamp")
    if len(timestamps) > 1:
        raise SignatureError(f"{_MALFORMED}: t= appears more than once")
    if not _UNIX_SECONDS.fullmatch(timestamps[0]):
        raise SignatureError(f"{_MALFORMED}: t= is not a unix timestamp in seconds")
    if not signatures:
        raise SignatureError(f"{_MALFORMED}: no v1= signature")
    if not all(_HEX_DIGEST.fullmatch(value) for value in signatures):
        raise SignatureError(f"{_MALFORMED}: v1= is not a hex HMAC-SHA256")
    return int(timestamps[0]), [bytes.fromhex(value) for value in signatures]


def verify_signature(
    body: bytes,
    header: str,
    secret: str | Sequence[str],
    *,
    tolerance_s: int = DEFAULT_TOLERANCE_S,
    now: float | None = None,
) -> int:
    """Verify an ``X-MisarMail-Signature`` header against the raw request body; return its ``t``.

    Receivers call this before parsing the body. ``secret`` may list several secrets (the
    receiver is rotating) and the header may carry several ``v1=`` entries (we are rotating):
    any match passes. The timestamp must lie within ``tolerance_s`` of ``now`` in either
    direction, which bounds replays. Digests are compared in constant time. Raises
    SignatureError naming the problem: missing or malformed header, timestamp outside the
    tolerance, or no matching signature.
    """
    secrets = [secret] if isinstance(secret, str) else list(secret)
    if not secrets:
        raise ValueError("at least one secret is needed to verify")
    timestamp, digests = _parse(header)
    age_s = (time.time() if now is None else now) - timestamp
    if abs(age_s) > tolerance_s:
        off = f"{age_s:.1f} s old" if age_s > 0 else f"{-age_s:.1f} s in the future"
        raise SignatureError(f"timestamp outside tolerance: {off}, over {tolerance_s} s allowed")
    message = f"{timestamp}.".encode() + body
    expected = [_hmac(s, message) for s in secrets]
    # Check every pair rather than stopping early, so timing reveals nothing about which matched.
    matched = False
    for digest in digests:
        for candidate in expected:
            matched |= hmac.compare_digest(digest, candidate)
    if not matched:
        raise SignatureError("no matching signature: no v1= entry matches the given secrets")
    return timestamp
