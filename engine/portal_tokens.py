"""Portal tokens: short-lived bearer tokens that confine the admin API to one account.

A token is a JWT (RFC 7519) signed with HMAC-SHA256 under ``WEBHOOKS_PORTAL_KEY``, made and checked
by PyJWT, a well-kept library, rather than by crypto of our own: the claims say which account
(``sub``), for whom (``aud``, so a token minted for something else with the same key is refused)
and until when (``exp``). Nothing is stored: a token is valid until it expires, and changing the
key ends every token at once. Pure: no I/O; the clock is the caller's.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import jwt

from engine.errors import EngineError, InvalidInput

AUDIENCE = "misar-webhooks/portal"
ALGORITHM = "HS256"
MIN_TTL = timedelta(minutes=1)
MAX_TTL = timedelta(hours=24)
DEFAULT_TTL = timedelta(hours=1)
MIN_KEY_CHARS = 32  # an HS256 key shorter than the hash is weaker than the hash (RFC 7518 §3.2)
MAX_ACCOUNT_CHARS = 200  # webhooks.check_account_id's limit


class TokenRefused(EngineError):
    """the portal token is not valid"""


class TokenExpired(TokenRefused):
    """the portal token has expired"""


@dataclass(frozen=True, slots=True)
class PortalToken:
    """A minted token and when it stops being accepted."""

    token: str
    account_id: str
    expires_at: datetime


def check_ttl(ttl: timedelta) -> timedelta:
    """``ttl`` if it is within [MIN_TTL, MAX_TTL]; InvalidInput for ``ttl`` otherwise."""
    if not MIN_TTL <= ttl <= MAX_TTL:
        raise InvalidInput(
            f"ttl: {ttl.total_seconds():g} s is outside {MIN_TTL.total_seconds():g}"
            f"..{MAX_TTL.total_seconds():g} s",
            field="ttl",
        )
    return ttl


def check_account(account_id: str) -> str:
    """The account id as SQL accepts it (webhooks.check_account_id); InvalidInput otherwise."""
    if not account_id.strip():
        raise InvalidInput("account_id: must not be empty", field="account_id")
    if len(account_id) > MAX_ACCOUNT_CHARS:
        raise InvalidInput(
            f"account_id: must be at most {MAX_ACCOUNT_CHARS} characters", field="account_id"
        )
    return account_id


def mint(key: str, account_id: str, ttl: timedelta, now: datetime | None = None) -> PortalToken:
    """A token for ``account_id`` valid for ``ttl`` from ``now`` (default: the current time)."""
    check_account(account_id)
    check_ttl(ttl)
    issued = (now or datetime.now(UTC)).replace(microsecond=0)
    expires = issued + ttl
    claims = {
        "sub": account_id,
        "aud": AUDIENCE,
        "iat": int(issued.timestamp()),
        "exp": int(expires.timestamp()),
        "jti": secrets.token_urlsafe(12),  # two tokens minted in one second still differ
    }
    return PortalToken(jwt.encode(claims, key, algorithm=ALGORITHM), account_id, expires)


def verify(key: str, token: str) -> PortalToken:
    """The token's account and expiry; TokenExpired or TokenRefused when it is not valid now."""
    try:
        claims = jwt.decode(
            token,
            key,
            algorithms=[ALGORITHM],
            audience=AUDIENCE,
            options={"require": ["exp", "iat", "sub", "aud"]},
        )
    except jwt.ExpiredSignatureError as exc:
        raise TokenExpired() from exc
    except jwt.PyJWTError as exc:
        raise TokenRefused(f"the portal token is not valid ({exc})") from exc
    account_id = claims["sub"]
    if not isinstance(account_id, str) or not account_id.strip():
        raise TokenRefused("the portal token names no account")
    return PortalToken(token, account_id, datetime.fromtimestamp(claims["exp"], UTC))


def portal_url(public_url: str, token: str) -> str:
    """The page's address with the token in the fragment, which browsers never send to a server
    (so it stays out of every access log on the way)."""
    return f"{public_url.rstrip('/')}/portal#token={token}"
