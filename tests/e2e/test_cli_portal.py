"""The CLI's customer-side commands in a subprocess: portal-access, endpoints test, event-types."""

from __future__ import annotations

import argparse

import asyncpg
import pytest

from engine.cli.args import duration, portal_ttl
from engine.portal_tokens import verify
from tests.e2e.test_cli import assert_error, cli, ok
from tests.support.engines import create_endpoint

KEY = "cli-portal-key-0123456789abcdef-xyz"


async def test_portal_access_prints_a_url_for_the_account() -> None:
    """portal-access signs a token for the account with WEBHOOKS_PORTAL_KEY (no database
    needed) under WEBHOOKS_PUBLIC_URL; --json gives token, url and expiry."""
    env = {"WEBHOOKS_PORTAL_KEY": KEY, "WEBHOOKS_PUBLIC_URL": "https://hooks.example.com"}
    run = await cli(None, "portal-access", "acct_42", "--ttl", "2h", "--json", env=env)
    grant = run.json()
    assert grant["url"] == f"https://hooks.example.com/portal#token={grant['token']}"
    token = verify(KEY, grant["token"])
    assert token.account_id == "acct_42"
    assert token.expires_at.isoformat() == grant["expires_at"]
    plain = await cli(None, "portal-access", "acct_42", env=env)
    assert plain.code == 0, plain.err
    assert plain.out.startswith("https://hooks.example.com/portal#token=")


@pytest.mark.parametrize(
    ("text", "accepted"), [("59s", False), ("1m", True), ("24h", True), ("1441m", False)]
)
def test_the_ttl_flag_takes_the_tokens_bounds(text: str, accepted: bool) -> None:
    """--ttl takes a duration within the tokens' bounds (1m..24h) and refuses one outside."""
    if accepted:
        assert portal_ttl(text) == duration(text)
    else:
        with pytest.raises(argparse.ArgumentTypeError, match="outside"):
            portal_ttl(text)


async def test_portal_access_refuses_a_bad_ttl_and_a_missing_key() -> None:
    """A ttl outside the bounds is a usage error naming --ttl; without the key, one line naming
    WEBHOOKS_PORTAL_KEY."""
    env = {"WEBHOOKS_PORTAL_KEY": KEY}
    assert_error(await cli(None, "portal-access", "a", "--ttl", "25h", env=env), 2, "--ttl")
    assert_error(await cli(None, "portal-access", "a"), 2, "WEBHOOKS_PORTAL_KEY")


async def test_event_types_and_a_test_event(db_url: str, conn: asyncpg.Connection) -> None:
    """event-types lists the catalogue; endpoints test queues a test delivery that the log
    marks as a test."""
    listed = await ok(db_url, "event-types")
    assert "email.bounced" in listed.out
    assert "endpoint.disabled (operational)" in listed.out
    names = {t["name"] for t in (await ok(db_url, "event-types", "--json")).json()}
    assert len(names) == 12
    endpoint, _ = await create_endpoint(conn, "https://example.com/h")
    sent = (
        await ok(db_url, "endpoints", "test", str(endpoint), "--event", "email.opened", "--json")
    ).json()
    shown = await ok(db_url, "deliveries", "show", str(sent["delivery_id"]))
    assert "email.opened (test)" in shown.out
    assert_error(
        await cli(db_url, "endpoints", "test", str(endpoint), "--event", "email.nope"),
        2,
        "event_type",
    )
