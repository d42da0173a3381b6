"""``misar-webhooks erase`` and ``misar-webhooks retention`` in a subprocess, as an operator runs
them: the address is never printed, bad input is one line."""

from __future__ import annotations

import asyncio
import json

import asyncpg

from engine.db.store import Store
from tests.e2e.test_cli import CLI, TIMEOUT_S, Run, assert_error, cli, cli_env, ok
from tests.support.factories import emit

ADDRESS = "alice@example.com"


async def cli_with_stdin(db_url: str, stdin: bytes, *args: str) -> Run:
    proc = await asyncio.create_subprocess_exec(
        CLI,
        *args,
        env=cli_env(db_url),
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(stdin), timeout=TIMEOUT_S)
    assert proc.returncode is not None
    return Run(proc.returncode, out.decode(), err.decode())


async def test_erase_redacts_and_prints_counts_never_the_address(
    db_url: str, store: Store, conn: asyncpg.Connection
) -> None:
    """erase prints the erasure's counts (table and --json) without the address; --email - reads
    it from standard input; acct_2's event keeps it."""
    await store.create_endpoint("acct_1", "https://a.example.com/hook")
    await store.create_endpoint("acct_2", "https://b.example.com/hook")
    first = await emit(conn, "acct_1", payload={"recipient": ADDRESS})
    await emit(conn, "acct_1", payload={"recipient": "bob@example.com"})
    other = await emit(conn, "acct_2", payload={"recipient": ADDRESS})

    run = await ok(db_url, "erase", "--account", "acct_1", "--email", ADDRESS)
    assert run.out.startswith("erasure 1 in account acct_1: 1 events, 1 live deliveries,")
    assert ADDRESS not in run.out + run.err
    payloads = {
        r["id"]: json.loads(r["payload"])
        for r in await conn.fetch("SELECT id, payload FROM webhooks.events")
    }
    assert payloads[first] == {"recipient": "redacted@redacted.invalid"}
    assert payloads[other] == {"recipient": ADDRESS}

    again = await cli_with_stdin(
        db_url, f"{ADDRESS}\n".encode(), "erase", "--account", "acct_1", "--email", "-", "--json"
    )
    record = again.json()
    assert {k: record[k] for k in ("id", "account_id", "events", "deliveries")} == {
        "id": 2,
        "account_id": "acct_1",
        "events": 0,
        "deliveries": 0,
    }
    assert ADDRESS not in again.out + again.err


async def test_erase_and_retention_refuse_bad_input_in_one_line(db_url: str) -> None:
    """A bad address, an empty stdin, a retention not shorter than the global one, and a missing
    choice between --keep and --global are each one line naming the problem."""
    assert_error(
        await cli(db_url, "erase", "--account", "acct_1", "--email", "not-an-address"),
        2,
        "email: must be one address",
    )
    assert_error(
        await cli_with_stdin(db_url, b"", "erase", "--account", "acct_1", "--email", "-"),
        2,
        "--email: no address given",
    )
    assert_error(
        await cli(db_url, "retention", "--account", "acct_1", "--keep", "30d"),
        2,
        "retention: 30 days is not shorter than the global retention 30 days",
    )
    assert_error(await cli(db_url, "retention", "--account", "acct_1"), 2, "--keep", "--global")


async def test_retention_sets_and_removes_an_accounts_own(
    db_url: str, conn: asyncpg.Connection
) -> None:
    """retention --keep stores the account's retention; --global removes it."""
    run = await ok(db_url, "retention", "--account", "acct_1", "--keep", "7d")
    assert run.out.strip() == "account acct_1 keeps its history for 7d"
    stored = await conn.fetchval("SELECT retention::text FROM webhooks.account_retention")
    assert stored == "7 days"
    run = await ok(db_url, "retention", "--account", "acct_1", "--keep", "36h")
    assert run.out.strip() == "account acct_1 keeps its history for 36h"
    run = await ok(db_url, "retention", "--account", "acct_1", "--global", "--json")
    assert json.loads(run.out) == {"account_id": "acct_1", "retention_s": None}
    assert await conn.fetchval("SELECT count(*) FROM webhooks.account_retention") == 0
