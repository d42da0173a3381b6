"""The admin API fuzzed by schemathesis with a portal token never shows another account's data.

The same generated requests as tests/e2e/test_admin_fuzz.py (positive and negative, every
operation), sent with a portal token for one account while another account has endpoints,
deliveries and secrets. Half the generated ids are the other account's. Besides the document's
checks, every answer is searched for the other account: its name, its endpoint ids and secrets,
and its deliveries' ids wherever a delivery is shown. Operator-only operations answer 403.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from datetime import timedelta
from typing import Any

import asyncpg
import pytest
from schemathesis import Response
from schemathesis.config import SchemathesisConfig

from engine.portal_tokens import mint
from tests.e2e.test_admin_fuzz import (
    FENCED_PORT,
    LOOPBACK,
    MAX_EXAMPLES,
    PORTAL_KEY,
    STATE_DEPENDENT,
    TOKEN,
    Pool,
    Run,
    api,
    fence,  # noqa: F401 - the fixture that fences the sender to loopback (used by name)
    fuzz,
    summary,
)
from tests.support.db import intake_drained
from tests.support.engines import RunningEngine, wait_until

StartEngine = Callable[..., Awaitable[RunningEngine]]

MINE = "acct_mine"
THEIRS = "acct_theirs"
PORTAL_CONFIG = SchemathesisConfig.from_dict(
    {
        "seed": 5,
        "generation": {"with-security-parameters": False},
        # 403: operations that take the operator token refuse a portal token whatever the input.
        "checks": {"negative_data_rejection": {"expected-statuses": [400, 403, 404, 405, 413]}},
    }
)
PORTAL_REFUSALS = (
    *STATE_DEPENDENT,
    (None, 403, "forbidden", "Authorization", None),  # an operator-only operation
    ("createEndpoint", 403, "forbidden", "account_id", None),  # another account named
)


def seed(base_url: str, account: str, endpoints: int, events: int) -> list[str]:
    """Endpoints (fenced, never reached) and events of one account, made by the operator; returns
    the endpoints' ids. The engine fans the events out into deliveries (see deliveries_of)."""
    ids = [
        api(
            "POST",
            base_url,
            "/v1/endpoints",
            {"account_id": account, "url": f"https://{LOOPBACK}:{FENCED_PORT}/{account}/{n}"},
        )["id"]
        for n in range(endpoints)
    ]
    for n in range(events):
        event = {"account_id": account, "type": "email.sent", "payload": {"n": n}}
        api("POST", base_url, "/v1/events", event)
    return ids


def deliveries_of(base_url: str, account: str) -> list[int]:
    listed = api("GET", base_url, f"/v1/deliveries?account_id={account}&limit=1000")
    return [row["delivery_id"] for row in listed["data"]]


class Leaks:
    """Finds the other account's data in an answer."""

    def __init__(self, endpoints: list[str], deliveries: list[int], secrets: list[str]) -> None:
        self.endpoints = set(endpoints)
        self.deliveries = set(deliveries)
        self.secrets = secrets

    def __call__(self, response: Response) -> str | None:
        text = response.text
        if THEIRS in text:
            return f"the answer names {THEIRS}"
        # An error may repeat the id the request named (the same words whether it exists or
        # not); any other answer holding another account's id shows that account's data.
        if response.status_code < 400 and any(e in text for e in self.endpoints):
            return "the answer holds an endpoint id of another account"
        if any(s[:12] in text for s in self.secrets):
            return "the answer holds a secret of another account"
        try:
            body = response.json()
        except ValueError:
            return None
        return self._walk(body)

    def _walk(self, node: Any) -> str | None:
        if isinstance(node, dict):
            if isinstance(node.get("account_id"), str) and node["account_id"] != MINE:
                return f"the answer shows account {node['account_id']!r}"
            delivery = node.get("delivery_id")
            if isinstance(delivery, int) and delivery in self.deliveries:
                return "the answer shows a delivery of another account"
            for value in node.values():
                if (why := self._walk(value)) is not None:
                    return why
        elif isinstance(node, list):
            for value in node:
                if (why := self._walk(value)) is not None:
                    return why
        return None


@pytest.mark.slow
async def test_a_portal_token_never_sees_another_accounts_data_under_fuzzing(
    open_policy: None,
    start_engine: StartEngine,
    conn: asyncpg.Connection,
    fence: list[str],  # noqa: F811 - the fixture imported above
) -> None:
    """Generated requests with a portal token get documented answers, and none holds the other
    account's names, ids, secrets or deliveries; the other account's data stays as it was."""
    running = await start_engine(admin_token=TOKEN, portal_key=PORTAL_KEY)
    base_url = running.engine.admin_url
    assert base_url is not None
    their_endpoints = await asyncio.to_thread(seed, base_url, THEIRS, 3, 3)
    my_endpoints = await asyncio.to_thread(seed, base_url, MINE, 3, 3)
    await wait_until(lambda: intake_drained(conn), what="the seeded events fanned out")
    their_deliveries = await asyncio.to_thread(deliveries_of, base_url, THEIRS)
    my_deliveries = await asyncio.to_thread(deliveries_of, base_url, MINE)
    assert len(their_deliveries) == len(my_deliveries) == 3 * 3
    secrets = [
        (await asyncio.to_thread(api, "GET", base_url, f"/v1/endpoints/{e}?reveal_secret=true"))[
            "secret"
        ]
        for e in their_endpoints
    ]
    before = await asyncio.to_thread(
        api, "GET", base_url, f"/v1/endpoints?account_id={THEIRS}&limit=1000"
    )
    token = mint(PORTAL_KEY, MINE, timedelta(hours=1)).token
    run = Run(
        {"Authorization": f"Bearer {token}"},
        PORTAL_CONFIG,
        PORTAL_REFUSALS,
        Leaks(their_endpoints, their_deliveries, secrets),
        # Fewer than the operator's run: the shapes are fuzzed there; here what matters is whose
        # ids the requests name, and half of the drawn ids are the other account's.
        max_examples=max(MAX_EXAMPLES // 2, 1),
    )
    # Half of the ids drawn are the other account's: each of those must be a 404.
    pool = Pool(my_endpoints + their_endpoints, my_deliveries + their_deliveries)
    tally = await asyncio.to_thread(fuzz, base_url, pool, run)
    print(*summary(tally), sep="\n")
    assert not tally.problems, f"{len(tally.problems)} problems:\n" + "\n".join(tally.problems)
    assert len(tally.cases) == tally.planned, "every operation and mode sent requests"
    assert fence == []
    after = await asyncio.to_thread(
        api, "GET", base_url, f"/v1/endpoints?account_id={THEIRS}&limit=1000"
    )
    assert after == before, "the other account's endpoints changed"
    refused = sum(n for (_, status, _), n in tally.state_dependent.items() if status == 404)
    assert refused > 0, "no request reached another account's id"
