"""Signing and verification: spec vectors, library cross-checks, round-trips, malformed headers."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time

import pytest
import standardwebhooks
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from engine.signing import (
    SIGNATURE_HEADER,
    SignatureError,
    secret_key,
    sign,
    verify_signature,
)

# The Standard Webhooks spec's example (also used by svix's library tests).
SPEC_SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"  # noqa: S105 - published test vector
SPEC_ID = "msg_p5jXN8AQM9LWM0D4loKWxJek"
SPEC_TIMESTAMP = 1614265330
SPEC_BODY = b'{"test": 2432232314}'
SPEC_SIGNATURE = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="

OTHER_SECRET = "whsec_" + base64.b64encode(bytes(range(32))).decode()
T = 1_700_000_000

secrets_st = st.binary(min_size=1, max_size=48).map(
    lambda key: "whsec_" + base64.b64encode(key).decode()
)
# No example database: the tree is shared and the examples are cheap to regenerate.
hyp = settings(database=None, max_examples=200)


def test_standard_webhooks_spec_vector() -> None:
    """The webhook-signature header matches the Standard Webhooks spec's published example."""
    headers = sign([SPEC_SECRET], SPEC_BODY, webhook_id=SPEC_ID, timestamp=SPEC_TIMESTAMP)
    assert headers["webhook-signature"] == SPEC_SIGNATURE
    assert headers["webhook-id"] == SPEC_ID
    assert headers["webhook-timestamp"] == str(SPEC_TIMESTAMP)


def test_misarmail_header_is_hex_hmac_of_timestamp_and_body() -> None:
    """X-MisarMail-Signature is t=<ts>,v1=<hex HMAC-SHA256(key, "<ts>." + body)>."""
    headers = sign([SPEC_SECRET], SPEC_BODY, webhook_id=SPEC_ID, timestamp=SPEC_TIMESTAMP)
    key = base64.b64decode(SPEC_SECRET.removeprefix("whsec_"))
    digest = hmac.new(key, b"1614265330." + SPEC_BODY, hashlib.sha256).hexdigest()
    assert headers[SIGNATURE_HEADER] == f"t={SPEC_TIMESTAMP},v1={digest}"


def test_standardwebhooks_library_accepts_our_headers() -> None:
    """The reference standardwebhooks library verifies our headers with each rotated secret."""
    now = int(time.time())
    headers = sign([SPEC_SECRET, OTHER_SECRET], SPEC_BODY, webhook_id=SPEC_ID, timestamp=now)
    for secret in (SPEC_SECRET, OTHER_SECRET):
        assert standardwebhooks.Webhook(secret).verify(SPEC_BODY, headers) == json.loads(SPEC_BODY)


@hyp
@given(body=st.text(), secret=secrets_st)
def test_standardwebhooks_library_accepts_any_text_body(body: str, secret: str) -> None:
    """The reference library verifies our headers for any UTF-8 body and any secret."""
    raw = body.encode()
    headers = sign([secret], raw, webhook_id="msg_1", timestamp=int(time.time()))
    standardwebhooks.Webhook(secret).verify(raw, headers, json_parse=False)


def test_rotated_secrets_sign_in_order_in_both_schemes() -> None:
    """Signing with two secrets yields two v1 entries in each scheme, in the order given."""
    both = sign([SPEC_SECRET, OTHER_SECRET], SPEC_BODY, webhook_id=SPEC_ID, timestamp=T)
    old = sign([SPEC_SECRET], SPEC_BODY, webhook_id=SPEC_ID, timestamp=T)
    new = sign([OTHER_SECRET], SPEC_BODY, webhook_id=SPEC_ID, timestamp=T)
    assert both[SIGNATURE_HEADER] == old[SIGNATURE_HEADER] + new[SIGNATURE_HEADER].removeprefix(
        f"t={T}"
    )
    assert both[SIGNATURE_HEADER].count("v1=") == 2
    assert both["webhook-signature"] == f"{old['webhook-signature']} {new['webhook-signature']}"


def test_sign_without_secrets_is_refused() -> None:
    """Signing with no secret raises rather than sending an unverifiable delivery."""
    with pytest.raises(ValueError, match="at least one secret"):
        sign([], b"{}", webhook_id="msg_1", timestamp=T)


@pytest.mark.parametrize(
    ("secret", "problem"),
    [
        ("MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw", "must start with"),
        ("whsec_not*base64!", "not valid base64"),
        ("whsec_", "empty"),
    ],
)
def test_invalid_secret_is_a_value_error(secret: str, problem: str) -> None:
    """A secret without the prefix, with bad base64 or with no key bytes raises ValueError."""
    with pytest.raises(ValueError, match=problem):
        secret_key(secret)


def test_unpadded_secret_decodes_like_padded() -> None:
    """Secret base64 without its trailing padding decodes to the same key."""
    padded = "whsec_" + base64.b64encode(b"\x01\x02\x03\x04").decode()
    assert padded.endswith("==")
    assert secret_key(padded.rstrip("=")) == secret_key(padded) == b"\x01\x02\x03\x04"


@hyp
@given(body=st.binary(), secrets=st.lists(secrets_st, min_size=1, max_size=3, unique=True))
def test_round_trip_verifies_with_each_secret(body: bytes, secrets: list[str]) -> None:
    """A header signed with 1-3 secrets verifies with any one of them, and with all of them."""
    header = sign(secrets, body, webhook_id="msg_1", timestamp=T)[SIGNATURE_HEADER]
    for secret in secrets:
        assert verify_signature(body, header, secret, now=T) == T
    assert verify_signature(body, header, secrets, now=T) == T


@hyp
@given(
    body=st.binary(min_size=1),
    secrets=st.lists(secrets_st, min_size=1, max_size=3, unique=True),
    data=st.data(),
)
def test_flipped_body_byte_fails(body: bytes, secrets: list[str], data: st.DataObject) -> None:
    """Changing any one byte of the body makes verification fail with every secret."""
    header = sign(secrets, body, webhook_id="msg_1", timestamp=T)[SIGNATURE_HEADER]
    index = data.draw(st.integers(0, len(body) - 1), label="index")
    mask = data.draw(st.integers(1, 255), label="mask")
    tampered = body[:index] + bytes([body[index] ^ mask]) + body[index + 1 :]
    with pytest.raises(SignatureError, match="no matching signature"):
        verify_signature(tampered, header, secrets, now=T)


@hyp
@given(
    body=st.binary(),
    secrets=st.lists(secrets_st, min_size=1, max_size=3, unique=True),
    wrong=secrets_st,
)
def test_wrong_secret_fails(body: bytes, secrets: list[str], wrong: str) -> None:
    """A secret that did not sign the header never verifies it."""
    assume(secret_key(wrong) not in {secret_key(s) for s in secrets})
    header = sign(secrets, body, webhook_id="msg_1", timestamp=T)[SIGNATURE_HEADER]
    with pytest.raises(SignatureError, match="no matching signature"):
        verify_signature(body, header, wrong, now=T)


def test_receiver_rotation_accepts_any_listed_secret() -> None:
    """A receiver holding old and new secrets accepts a delivery signed with only the new one."""
    header = sign([OTHER_SECRET], SPEC_BODY, webhook_id=SPEC_ID, timestamp=T)[SIGNATURE_HEADER]
    assert verify_signature(SPEC_BODY, header, [SPEC_SECRET, OTHER_SECRET], now=T) == T


@pytest.mark.parametrize("offset", [-300, -1, 0, 1, 299.9, 300])
def test_timestamp_within_tolerance_passes(offset: float) -> None:
    """A timestamp up to exactly 300 s old or 300 s in the future verifies."""
    header = sign([SPEC_SECRET], SPEC_BODY, webhook_id=SPEC_ID, timestamp=T)[SIGNATURE_HEADER]
    assert verify_signature(SPEC_BODY, header, SPEC_SECRET, now=T + offset) == T


@pytest.mark.parametrize(
    ("offset", "problem"), [(300.001, "s old"), (301, "s old"), (-300.001, "in the future")]
)
def test_timestamp_outside_tolerance_fails(offset: float, problem: str) -> None:
    """A timestamp just beyond 300 s in either direction fails, saying which way it is off."""
    header = sign([SPEC_SECRET], SPEC_BODY, webhook_id=SPEC_ID, timestamp=T)[SIGNATURE_HEADER]
    with pytest.raises(SignatureError, match=f"timestamp outside tolerance: .*{problem}"):
        verify_signature(SPEC_BODY, header, SPEC_SECRET, now=T + offset)


def test_custom_tolerance_applies() -> None:
    """tolerance_s replaces the default window."""
    header = sign([SPEC_SECRET], SPEC_BODY, webhook_id=SPEC_ID, timestamp=T)[SIGNATURE_HEADER]
    assert verify_signature(SPEC_BODY, header, SPEC_SECRET, tolerance_s=10, now=T + 10) == T
    with pytest.raises(SignatureError, match="outside tolerance"):
        verify_signature(SPEC_BODY, header, SPEC_SECRET, tolerance_s=10, now=T + 11)


def test_default_now_is_the_current_time() -> None:
    """Without now, a fresh header verifies and a day-old one does not."""
    fresh = int(time.time())
    header = sign([SPEC_SECRET], SPEC_BODY, webhook_id=SPEC_ID, timestamp=fresh)[SIGNATURE_HEADER]
    assert verify_signature(SPEC_BODY, header, SPEC_SECRET) == fresh
    stale = sign([SPEC_SECRET], SPEC_BODY, webhook_id=SPEC_ID, timestamp=fresh - 86400)
    with pytest.raises(SignatureError, match="s old"):
        verify_signature(SPEC_BODY, stale[SIGNATURE_HEADER], SPEC_SECRET)


def test_whitespace_and_unknown_schemes_are_tolerated() -> None:
    """Spaces around parts, v0= entries and a trailing comma do not prevent verification."""
    header = sign([SPEC_SECRET], SPEC_BODY, webhook_id=SPEC_ID, timestamp=T)[SIGNATURE_HEADER]
    digest = header.split("v1=")[1]
    loose = f" t = {T} , v0=deadbeef,  v2=whatever ,v1= {digest} ,"
    assert verify_signature(SPEC_BODY, loose, SPEC_SECRET, now=T) == T


def test_uppercase_hex_digest_is_accepted() -> None:
    """Hex digits are compared as bytes, so letter case does not matter."""
    header = sign([SPEC_SECRET], SPEC_BODY, webhook_id=SPEC_ID, timestamp=T)[SIGNATURE_HEADER]
    prefix, digest = header.split("v1=")
    assert verify_signature(SPEC_BODY, f"{prefix}v1={digest.upper()}", SPEC_SECRET, now=T) == T


GOOD_DIGEST = "ab" * 32


@pytest.mark.parametrize(
    ("header", "problem"),
    [
        ("", "missing X-MisarMail-Signature header"),
        ("   ", "missing X-MisarMail-Signature header"),
        ("garbage", "expected comma-separated key=value parts"),
        (f"t={T},={GOOD_DIGEST}", "expected comma-separated key=value parts"),
        (f"v1={GOOD_DIGEST}", "no t= timestamp"),
        (f"t=,v1={GOOD_DIGEST}", "t= is not a unix timestamp"),
        (f"t=-5,v1={GOOD_DIGEST}", "t= is not a unix timestamp"),
        (f"t=1.5,v1={GOOD_DIGEST}", "t= is not a unix timestamp"),
        (f"t={'9' * 40},v1={GOOD_DIGEST}", "t= is not a unix timestamp"),
        (f"t={T},t={T},v1={GOOD_DIGEST}", "t= appears more than once"),
        (f"t={T}", "no v1= signature"),
        (f"t={T},v0={GOOD_DIGEST}", "no v1= signature"),
        (f"t={T},v1=xyz", "v1= is not a hex HMAC-SHA256"),
        (f"t={T},v1={GOOD_DIGEST}00", "v1= is not a hex HMAC-SHA256"),
        (f"t={T},v1=\u0661{GOOD_DIGEST[1:]}", "v1= is not a hex HMAC-SHA256"),
    ],
)
def test_malformed_header_names_the_problem(header: str, problem: str) -> None:
    """Each kind of malformed header raises SignatureError with a message naming the defect."""
    with pytest.raises(SignatureError) as excinfo:
        verify_signature(SPEC_BODY, header, SPEC_SECRET, now=T)
    assert problem in str(excinfo.value)


def test_verify_without_secrets_is_refused() -> None:
    """Verifying against an empty list of secrets is a caller error, not a failed signature."""
    header = sign([SPEC_SECRET], SPEC_BODY, webhook_id=SPEC_ID, timestamp=T)[SIGNATURE_HEADER]
    with pytest.raises(ValueError, match="at least one secret"):
        verify_signature(SPEC_BODY, header, [], now=T)


@hyp
@given(header=st.text(max_size=200))
def test_arbitrary_header_raises_only_signature_error(header: str) -> None:
    """Any header text either verifies or raises SignatureError, never another exception."""
    with pytest.raises(SignatureError):
        verify_signature(SPEC_BODY, header, SPEC_SECRET, now=T)
