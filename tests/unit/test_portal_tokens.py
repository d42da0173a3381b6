"""Portal tokens (engine.portal_tokens) and the access rules built on them (engine.admin.access)."""

from __future__ import annotations

import base64
import json
from datetime import UTC, datetime, timedelta

import jwt
import pytest

from engine import config, portal_tokens
from engine.admin.access import OPERATOR, Unauthenticated, authenticate
from engine.config import Settings
from engine.errors import ConfigError, InvalidInput
from engine.portal_tokens import (
    MAX_TTL,
    MIN_TTL,
    TokenExpired,
    TokenRefused,
    mint,
    portal_url,
    verify,
)

KEY = "k" * 32
OPERATOR_TOKEN = "o" * 32


def test_a_minted_token_verifies_to_its_account_and_expiry() -> None:
    """verify() returns the account and the expiry that mint() put in the token."""
    now = datetime.now(UTC)
    token = mint(KEY, "acct_42", timedelta(minutes=5), now)
    checked = verify(KEY, token.token)
    assert checked.account_id == "acct_42"
    assert (
        checked.expires_at == token.expires_at == now.replace(microsecond=0) + timedelta(minutes=5)
    )
    assert mint(KEY, "acct_42", timedelta(minutes=5), now).token != token.token


def test_an_expired_token_is_refused_as_expired() -> None:
    """A token whose exp has passed raises TokenExpired."""
    old = datetime.now(UTC) - timedelta(hours=2)
    token = mint(KEY, "acct_42", timedelta(hours=1), old)
    with pytest.raises(TokenExpired):
        verify(KEY, token.token)


def _tamper_claims(token: str, **changes: object) -> str:
    header, claims, signature = token.split(".")
    decoded = json.loads(base64.urlsafe_b64decode(claims + "=" * (-len(claims) % 4)))
    decoded.update(changes)
    raw = base64.urlsafe_b64encode(json.dumps(decoded).encode()).rstrip(b"=").decode()
    return f"{header}.{raw}.{signature}"


@pytest.mark.parametrize(
    "tamper",
    [
        pytest.param(lambda t: _tamper_claims(t, sub="acct_other"), id="other-account"),
        pytest.param(lambda t: _tamper_claims(t, exp=4102444800), id="later-expiry"),
        pytest.param(lambda t: t[:-2] + ("AA" if not t.endswith("AA") else "BB"), id="signature"),
        pytest.param(lambda t: mint("x" * 32, "acct_42", timedelta(hours=1)).token, id="key"),
        pytest.param(
            lambda t: jwt.encode(
                {"sub": "acct_42", "aud": "other", "iat": 1, "exp": 4102444800}, KEY, "HS256"
            ),
            id="audience",
        ),
        pytest.param(
            lambda t: jwt.encode({"sub": "acct_42", "aud": portal_tokens.AUDIENCE}, KEY, "HS256"),
            id="no-expiry",
        ),
        pytest.param(lambda t: "not-a-token", id="garbage"),
    ],
)
def test_a_tampered_or_foreign_token_is_refused(tamper: object) -> None:
    """Changed claims, a changed signature, another key or audience, no expiry: TokenRefused."""
    token = mint(KEY, "acct_42", timedelta(hours=1)).token
    assert callable(tamper)
    with pytest.raises(TokenRefused) as caught:
        verify(KEY, tamper(token))
    assert not isinstance(caught.value, TokenExpired)


@pytest.mark.parametrize(
    ("ttl", "accepted"),
    [
        (MIN_TTL - timedelta(seconds=1), False),
        (MIN_TTL, True),
        (MAX_TTL, True),
        (MAX_TTL + timedelta(seconds=1), False),
    ],
)
def test_the_ttl_is_bounded(ttl: timedelta, accepted: bool) -> None:
    """mint() accepts a lifetime within [MIN_TTL, MAX_TTL] and refuses one outside, naming ttl."""
    if accepted:
        assert verify(KEY, mint(KEY, "acct_1", ttl).token).account_id == "acct_1"
    else:
        with pytest.raises(InvalidInput) as caught:
            mint(KEY, "acct_1", ttl)
        assert caught.value.field == "ttl"


@pytest.mark.parametrize("account", ["", "   ", "a" * 201])
def test_an_account_sql_would_refuse_gets_no_token(account: str) -> None:
    """Empty, blank or over-long account ids are refused as webhooks.check_account_id does."""
    with pytest.raises(InvalidInput):
        mint(KEY, account, timedelta(hours=1))


def test_the_portal_url_carries_the_token_in_the_fragment() -> None:
    """The token goes after '#', which browsers never send to a server."""
    assert portal_url("https://hooks.example.com/", "abc") == (
        "https://hooks.example.com/portal#token=abc"
    )


@pytest.mark.parametrize(
    ("key", "accepted"),
    [("k" * (portal_tokens.MIN_KEY_CHARS - 1), False), ("k" * portal_tokens.MIN_KEY_CHARS, True)],
)
def test_the_portal_key_is_refused_when_short(key: str, accepted: bool) -> None:
    """WEBHOOKS_PORTAL_KEY needs MIN_KEY_CHARS characters, the same bound as config's."""
    assert config.MIN_PORTAL_KEY_CHARS == portal_tokens.MIN_KEY_CHARS
    if accepted:
        assert Settings(portal_key=key).portal_key == key
    else:
        with pytest.raises(ConfigError, match="WEBHOOKS_PORTAL_KEY"):
            Settings(portal_key=key)


def test_the_operator_token_and_portal_tokens_are_told_apart() -> None:
    """The operator token is the operator; a portal token its account; anything else 401."""
    token = mint(KEY, "acct_42", timedelta(hours=1)).token
    assert authenticate(f"Bearer {OPERATOR_TOKEN}", OPERATOR_TOKEN, KEY) == OPERATOR
    assert authenticate(f"Bearer {token}", OPERATOR_TOKEN, KEY).account_id == "acct_42"
    for header in ("", "Bearer wrong", f"Basic {token}"):
        with pytest.raises(Unauthenticated):
            authenticate(header, OPERATOR_TOKEN, KEY)
    with pytest.raises(Unauthenticated):  # no portal key: a portal token is just a wrong token
        authenticate(f"Bearer {token}", OPERATOR_TOKEN, None)
    expired = mint(KEY, "acct_42", timedelta(hours=1), datetime.now(UTC) - timedelta(hours=2))
    with pytest.raises(Unauthenticated) as caught:
        authenticate(f"Bearer {expired.token}", None, KEY)
    assert caught.value.code == "token_expired"
    # Without an operator token (loopback only) a request without a bearer is the operator's.
    assert authenticate("", None, KEY) == OPERATOR
