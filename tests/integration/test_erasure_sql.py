"""webhooks.erase_recipient on a database where other accounts hold the same address."""

from __future__ import annotations

import json
import random
import re
from typing import Any
from uuid import UUID

import asyncpg
import pytest

from engine.db.store import Store
from engine.errors import InvalidInput
from tests.support.db import error_of, fan_out
from tests.support.factories import attempt, claim, outcome

ADDRESS = "alice@example.com"
MARKER = "redacted@redacted.invalid"
# The address whole, in any case, with '@' or '%40': written independently of the SQL's patterns.
TRACE = re.compile(r"(?<![\w.+-])alice(@|%40)example\.com(?![\w-]|\.\w)", re.IGNORECASE)

# Everything an app might put in a payload around the address, and look-alikes that must stay.
PAYLOAD = {
    "recipient": "Alice@Example.COM",
    "to": ["Alice <alice@example.com>", "malice@example.com"],
    "alice@example.com": {"opens": 2},
    "link": "https://t.example/c?u=alice%40example.com&x=1",
    "note": "mail alice@example.com.",
    "other": "alice@example.community",
    "nested": {"deep": [{"cc": "ALICE@EXAMPLE.COM"}]},
    "body": "Hi,\nalice@example.com\twrote",
}
REDACTED = {
    "recipient": MARKER,
    "to": [f"Alice <{MARKER}>", "malice@example.com"],
    MARKER: {"opens": 2},
    "link": "https://t.example/c?u=redacted%40redacted.invalid&x=1",
    "note": f"mail {MARKER}.",
    "other": "alice@example.community",
    "nested": {"deep": [{"cc": MARKER}]},
    "body": f"Hi,\n{MARKER}\twrote",
}


async def emit(conn: asyncpg.Connection, account: str, payload: Any, key: str | None = None) -> int:
    event_id: int = await conn.fetchval(
        "SELECT webhooks.emit($1, 'email.bounced', $2::jsonb, $3)",
        account,
        json.dumps(payload),
        key,
    )
    return event_id


async def all_rows(conn: asyncpg.Connection) -> dict[str, list[dict[str, Any]]]:
    """Every row of every table of the webhooks schema (partitions read through their parent)."""
    tables = await conn.fetch(
        "SELECT c.relname FROM pg_class c WHERE c.relnamespace = 'webhooks'::regnamespace"
        " AND c.relkind IN ('r', 'p', 'u') AND NOT c.relispartition ORDER BY 1"
    )
    return {
        t["relname"]: [
            json.loads(r[0])
            for r in await conn.fetch(f'SELECT to_jsonb(t)::text FROM webhooks."{t["relname"]}" t')
        ]
        for t in tables
    }


def strings(value: Any) -> list[str]:
    """Every string in a JSON value, object keys included, decoded (a newline is a newline)."""
    if isinstance(value, str):
        return [value]
    if isinstance(value, dict):
        return [*value, *(t for v in value.values() for t in strings(v))]
    if isinstance(value, list):
        return [t for v in value for t in strings(v)]
    return []


def holds_address(row: dict[str, Any]) -> bool:
    return any(TRACE.search(text) for text in strings(row))


def belongs_to(row: dict[str, Any], account: str, endpoints: set[str]) -> bool:
    return row.get("account_id") == account or str(row.get("endpoint_id")) in endpoints


class Setup:
    def __init__(
        self, a: UUID, b: UUID, c: UUID, mixed: int, plain: int, pending: int, fanned_out: bool
    ) -> None:
        self.a, self.b, self.c = a, b, c
        self.mixed, self.plain, self.pending = mixed, plain, pending
        self.fanned_out = fanned_out


@pytest.fixture(params=[True, False], ids=["pending-fanned-out", "pending-in-intake"])
async def two_accounts(
    store: Store, conn: asyncpg.Connection, request: pytest.FixtureRequest
) -> Setup:
    """acct_1 (endpoints a, b) and acct_2 (endpoint c) both hold the address: in payloads, keys,
    response excerpts and error texts of live and ended deliveries."""
    await conn.execute("UPDATE webhooks.settings SET retry_schedule = '{1 hour}', retry_jitter = 0")
    a, _ = await store.create_endpoint("acct_1", "https://a.example.com/hook")
    b, _ = await store.create_endpoint("acct_1", "https://b.example.com/hook")
    c, _ = await store.create_endpoint("acct_2", "https://c.example.com/hook")
    mixed = await emit(conn, "acct_1", PAYLOAD, key=f"bounce:{ADDRESS}:1")
    plain = await emit(conn, "acct_1", {"recipient": "bob@example.com"})
    await emit(conn, "acct_2", {"recipient": ADDRESS}, key=f"bounce:{ADDRESS}:1")
    await emit(conn, "acct_2", {"recipient": ADDRESS})
    echo = f'{{"error": "no such user {ADDRESS}"}}'
    # a: both deliveries fail once and wait for their retry, the address in the excerpt and error.
    await store.record(
        [
            outcome(d, 500, response_excerpt=echo, error_message=f"HTTP 500: {ADDRESS}")
            for d in await claim(store, a, 10)
        ]
    )
    await attempt(store, b, 200, excerpt=echo)  # b: both delivered
    await store.record([outcome(d, 500, response_excerpt=echo) for d in await claim(store, c, 1)])
    await attempt(store, c, 200, excerpt=echo)
    # The last event either has its deliveries or still waits in the intake (no engine claimed
    # since it was accepted): the erasure must reach it either way.
    pending = await emit(conn, "acct_1", {"recipient": ADDRESS.upper()})
    fanned_out = bool(request.param)
    if fanned_out:
        assert await fan_out(conn) == 1
    assert await conn.fetchval("SELECT count(*) FROM webhooks.intake") == (0 if fanned_out else 1)
    return Setup(a, b, c, mixed, plain, pending, fanned_out)


async def test_erasure_leaves_no_trace_in_the_account_and_touches_no_other(
    store: Store, conn: asyncpg.Connection, two_accounts: Setup
) -> None:
    """After erase_recipient no row of acct_1 in any table holds the address; acct_2's rows are
    byte for byte what they were; look-alike addresses stay; an erasure row without the address."""
    s = two_accounts
    ep1 = {str(s.a), str(s.b)}
    ep2 = {str(s.c)}
    before = await all_rows(conn)
    assert any(holds_address(r) for rows in before.values() for r in rows)

    changed = await conn.fetchval("SELECT webhooks.erase_recipient('acct_1', $1)", ADDRESS)

    assert changed == 2  # the mixed payload and the pending one; the plain event was not changed
    after = await all_rows(conn)
    for table, rows in after.items():
        for row in rows:
            if holds_address(row):
                assert belongs_to(row, "acct_2", ep2), f"{table} keeps the address: {row}"
    for table in before:
        others_before = [r for r in before[table] if not belongs_to(r, "acct_1", ep1)]
        others_after = [r for r in after[table] if not belongs_to(r, "acct_1", ep1)]
        if table == "erasures":
            continue
        assert others_after == others_before, f"{table}: another account's rows changed"
    payload = await conn.fetchval("SELECT payload FROM webhooks.events WHERE id = $1", s.mixed)
    assert json.loads(payload) == REDACTED
    key = await conn.fetchval("SELECT idempotency_key FROM webhooks.events WHERE id = $1", s.mixed)
    assert key == f"bounce:{MARKER}:1"
    (erasure,) = after["erasures"]
    assert erasure["account_id"] == "acct_1"
    assert {k: erasure[k] for k in ("events", "deliveries", "attempts", "outcomes")} == {
        "events": 2,
        # a's two retries (error texts) and the pending event's two deliveries, once it has them
        "deliveries": 4 if s.fanned_out else 2,
        "attempts": 4,  # a's two failures, b's two successes
        "outcomes": 0,  # a 200 leaves no error text
    }
    assert erasure["idempotency_keys"] == 1
    assert set(erasure) == {
        "id",
        "account_id",
        "erased_at",
        "events",
        "deliveries",
        "attempts",
        "outcomes",
        "idempotency_keys",
    }


async def test_a_pending_delivery_is_claimed_with_the_redacted_payload(
    store: Store, conn: asyncpg.Connection, two_accounts: Setup
) -> None:
    """claim builds the body from the event row, so what is claimed after an erasure is redacted;
    a second erasure of the same address changes nothing."""
    record = await store.erase_recipient("acct_1", ADDRESS.title())
    assert record.events == 2
    bodies = {d.event_id: json.loads(d.body) for d in await claim(store, two_accounts.b, 10)}
    assert bodies[two_accounts.pending]["data"] == {"recipient": MARKER}
    assert (await store.erase_recipient("acct_1", ADDRESS)).events == 0
    assert await conn.fetchval("SELECT count(*) FROM webhooks.erasures") == 2


@pytest.mark.parametrize(
    ("email", "reason"),
    [
        ("", "must not be empty"),
        ("alice", "must be one address"),
        ("alice@@example.com", "must be one address"),
        ("al ice@example.com", "must be one address"),
        ('"alice"@example.com', "must be one address"),
        ("a" * 250 + "@b.cd", "at most 254 characters"),
    ],
)
async def test_bad_addresses_are_refused_without_repeating_them(
    tx: asyncpg.Connection, email: str, reason: str
) -> None:
    """An address that is not one plain address is refused (WH001, field email), and the message
    does not repeat it (Postgres logs errors)."""
    exc = await error_of(tx, tx.fetchval("SELECT webhooks.erase_recipient('acct_1', $1)", email))
    assert exc.sqlstate == "WH001"
    assert str(exc).startswith("email: ")
    assert reason in str(exc)
    assert not email or email not in str(exc)


async def test_bad_account_and_shortest_address_through_the_store(store: Store) -> None:
    """An empty account is refused naming account_id; a one-letter address on each side is valid."""
    with pytest.raises(InvalidInput, match="account_id"):
        await store.erase_recipient(" ", ADDRESS)
    assert (await store.erase_recipient("acct_9", "a@b")).events == 0


# Pieces that random payload strings are made of: the address in its forms, look-alikes, and the
# characters that do or do not bound an address (ASCII only: what counts as a letter beyond ASCII
# depends on the database's locale).
PIECES = [
    "alice@example.com",
    "ALICE@Example.Com",
    "alice%40example.com",
    "malice@example.com",
    "alice@example.community",
    "x.alice@example.com",
    "alice@example.com.au",
    "alice@example",
    "@",
    ".",
    " ",
    "\n",
    "\t",
    "<",
    ">",
    '"',
    "=",
    "?",
    "&",
    "_",
    "-",
    "+",
    ",",
    ":",
    "m",
    "7",
]
REFERENCE = re.compile(
    r"(?<![A-Za-z0-9._+-])alice(@|%40)example\.com(?![A-Za-z0-9_-]|\.[A-Za-z0-9])", re.IGNORECASE
)


def reference_redaction(value: Any) -> Any:
    """What erasure must make of a JSON value, computed on decoded strings, independently of SQL."""
    if isinstance(value, str):
        return REFERENCE.sub(
            lambda m: MARKER if m[1] == "@" else "redacted%40redacted.invalid", value
        )
    if isinstance(value, dict):
        return {k: reference_redaction(v) for k, v in value.items()}
    if isinstance(value, list):
        return [reference_redaction(v) for v in value]
    return value


async def test_redaction_matches_a_reference_on_random_payloads(tx: asyncpg.Connection) -> None:
    """On payloads built at random from the address, look-alikes and boundary characters, the SQL
    redaction of the JSON text equals a reference redaction of the decoded strings: every
    occurrence of the address goes, nothing else changes, and the result is valid JSON."""
    rng = random.Random(17)
    payloads = [
        {
            "s": "".join(rng.choices(PIECES, k=rng.randint(1, 12))),
            "list": ["".join(rng.choices(PIECES, k=rng.randint(0, 6))) for _ in range(2)],
            "n": n,
        }
        for n in range(400)
    ]
    rows = await tx.fetch(
        "SELECT webhooks.redact_v1(t::jsonb::text, webhooks.erasure_patterns_v1($2))::jsonb AS r"
        " FROM unnest($1::text[]) WITH ORDINALITY AS u(t, i) ORDER BY i",
        [json.dumps(p) for p in payloads],
        ADDRESS,
    )
    assert sum(bool(REFERENCE.search(json.dumps(p))) for p in payloads) > 100
    for payload, row in zip(payloads, rows, strict=True):
        assert json.loads(row["r"]) == reference_redaction(payload), payload
