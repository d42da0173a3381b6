"""The CLI as an operator runs it: `misar-webhooks ...` in a subprocess against a real database.

Checked: tables carry the expected columns and values, ``--json`` parses, every failure is one line
on stderr with a non-zero exit and no traceback, and a secret is printed only by ``endpoints add``,
``endpoints rotate-secret`` (the new one) and ``endpoints show --reveal-secret``.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg

from engine.db.read_models import DeliveryStatus
from engine.db.store import Store
from tests.support import factories

CLI = str(Path(sys.executable).with_name("misar-webhooks"))
TIMEOUT_S = 30.0


@dataclass(frozen=True)
class Run:
    """What one CLI run did."""

    code: int
    out: str
    err: str

    def json(self) -> Any:
        assert self.code == 0, self.err
        return json.loads(self.out)


def cli_env(db_url: str | None, extra: Mapping[str, str] | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("WEBHOOKS_")}
    if db_url is not None:
        env["WEBHOOKS_DATABASE_URL"] = db_url
    return env | dict(extra or {})


async def cli(db_url: str | None, *args: str, env: Mapping[str, str] | None = None) -> Run:
    """Run ``misar-webhooks *args`` to completion (killed after TIMEOUT_S)."""
    proc = await asyncio.create_subprocess_exec(
        CLI,
        *args,
        env=cli_env(db_url, env),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        out, err = await asyncio.wait_for(proc.communicate(), timeout=TIMEOUT_S)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    assert proc.returncode is not None
    return Run(proc.returncode, out.decode(), err.decode())


async def ok(db_url: str, *args: str) -> Run:
    run = await cli(db_url, *args)
    assert run.code == 0, f"{args} failed: {run.err}"
    assert "Traceback" not in run.out + run.err
    return run


def assert_error(run: Run, code: int, *fragments: str) -> None:
    """A failure: the given exit code, nothing on stdout, one line on stderr naming the problem."""
    assert run.code == code, run
    assert run.out == ""
    lines = run.err.splitlines()
    assert len(lines) == 1, run.err
    assert lines[0].startswith("misar-webhooks: error: "), lines[0]
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])


def table(run: Run) -> tuple[list[str], list[list[str]]]:
    """Headers and rows of a printed table (cells are separated by two or more spaces)."""
    lines = [line for line in run.out.splitlines() if line.strip()]
    split = [[cell for cell in line.split("  ") if cell.strip()] for line in lines]
    return [h.strip() for h in split[0]], [[c.strip() for c in row] for row in split[1:]]


# -- endpoints ------------------------------------------------------------------------------------


async def test_add_prints_the_secret_once_and_views_mask_it(db_url: str) -> None:
    """add shows id and secret; list and show mask it; only show --reveal-secret prints it again."""
    add = await ok(
        db_url, "endpoints", "add", "https://example.com/hook", "--account", "acct_1",
        "--events", "email.sent,email.bounced", "--events", "contact.*", "--description", "CRM",
    )  # fmt: skip
    first = add.out.splitlines()[0]
    assert first.startswith("created endpoint ")
    endpoint_id = first.removeprefix("created endpoint ")
    secret = next(w for w in add.out.split() if w.startswith("whsec_"))
    assert len(secret) > 40
    assert "contact.*, email.bounced, email.sent" in add.out
    masked = secret[:10] + "…"

    listed, shown, shown_json, listed_json = await asyncio.gather(
        ok(db_url, "endpoints", "list"),
        ok(db_url, "endpoints", "show", endpoint_id),
        ok(db_url, "endpoints", "show", endpoint_id, "--json"),
        ok(db_url, "endpoints", "list", "--json"),
    )
    headers, rows = table(listed)
    assert headers == ["ID", "ACCOUNT", "URL", "EVENTS", "STATE", "CREATED"]
    assert rows[0][:5] == [
        endpoint_id, "acct_1", "https://example.com/hook", "contact.*,email.bounced,email.sent",
        "enabled",
    ]  # fmt: skip
    assert re.search(rf"^secret +{re.escape(masked)}$", shown.out, re.MULTILINE)
    assert shown_json.json()["secret"] == masked
    assert [e["secret"] for e in listed_json.json()["items"]] == [masked]
    assert listed_json.json()["next_cursor"] is None
    for run in (listed, shown, shown_json, listed_json):
        assert secret not in run.out + run.err

    revealed = await ok(db_url, "endpoints", "show", endpoint_id, "--reveal-secret", "--json")
    assert revealed.json()["secret"] == secret


async def test_update_disable_enable_rotate_and_delete(db_url: str, store: Store) -> None:
    """Each change is applied and echoed as JSON; rotate prints only the new secret, once."""
    endpoint_id, old_secret = await store.create_endpoint("acct_1", "https://example.com/a")
    eid = str(endpoint_id)

    updated = await ok(
        db_url, "endpoints", "update", eid, "--url", "https://example.com/b", "--events",
        "email.*", "--max-in-flight", "3", "--ordering", "strict", "--rate-limit", "5", "--json",
    )  # fmt: skip
    body = updated.json()
    assert (body["url"], body["event_types"], body["max_in_flight"]) == (
        "https://example.com/b",
        ["email.*"],
        3,
    )
    assert (body["ordering"], body["rate_limit_per_s"]) == ("strict", 5.0)

    disabled = await ok(db_url, "endpoints", "disable", eid, "--reason", "maintenance")
    assert re.search(r"^state +disabled since .*: maintenance$", disabled.out, re.MULTILINE)
    enabled = (await ok(db_url, "endpoints", "enable", eid, "--json")).json()
    assert (enabled["enabled"], enabled["disabled_reason"]) == (True, None)

    rotated = (
        await ok(db_url, "endpoints", "rotate-secret", eid, "--grace", "1h", "--json")
    ).json()
    new_secret = rotated["secret"]
    assert new_secret.startswith("whsec_")
    assert new_secret != old_secret
    assert rotated["previous_secret_expires_at"] is not None
    shown = await ok(db_url, "endpoints", "show", eid)
    assert re.search(
        rf"^previous secret +{re.escape(old_secret[:10])}… \(valid until ", shown.out, re.MULTILINE
    )
    assert new_secret not in shown.out
    assert old_secret not in shown.out
    assert old_secret not in json.dumps(rotated)

    deleted = (await ok(db_url, "endpoints", "delete", eid, "--json")).json()
    assert deleted == {"id": eid, "deleted": True}
    assert_error(await cli(db_url, "endpoints", "show", eid), 1, f"no endpoint {eid}")


async def test_endpoint_list_pages_with_the_printed_cursor(db_url: str, store: Store) -> None:
    """--limit cuts a page; its cursor (in JSON, and on stderr for people) gives the rest."""
    for n in range(3):
        await store.create_endpoint(f"acct_{n}", "https://example.com/h")
    first, people = await asyncio.gather(
        ok(db_url, "endpoints", "list", "--limit", "2", "--json"),
        ok(db_url, "endpoints", "list", "--limit", "2"),
    )
    cursor = first.json()["next_cursor"]
    assert [e["account_id"] for e in first.json()["items"]] == ["acct_0", "acct_1"]
    assert people.err.strip() == f"more: --cursor {cursor}"
    assert len(table(people)[1]) == 2
    rest = await ok(db_url, "endpoints", "list", "--limit", "2", "--cursor", cursor, "--json")
    assert [e["account_id"] for e in rest.json()["items"]] == ["acct_2"]
    assert rest.json()["next_cursor"] is None


# -- deliveries -----------------------------------------------------------------------------------


async def test_deliveries_list_filters_and_show(
    db_url: str, store: Store, conn: asyncpg.Connection
) -> None:
    """list filters by status, endpoint, event type and since; show lists every attempt."""
    log = await factories.mixed_log(store, conn)
    everything, failed, by_endpoint, by_type, future = await asyncio.gather(
        ok(db_url, "deliveries", "list"),
        ok(db_url, "deliveries", "list", "--status", "failed", "--json"),
        ok(db_url, "deliveries", "list", "--endpoint", str(log.b), "--since", "1h", "--json"),
        ok(db_url, "deliveries", "list", "--event-type", "email.opened", "--account", "acct_2",
           "--json"),
        ok(db_url, "deliveries", "list", "--since", "2999-01-01T00:00Z"),
    )  # fmt: skip
    headers, rows = table(everything)
    assert headers == [
        "DELIVERY", "CREATED", "EVENT", "STATUS", "ATTEMPTS", "LAST CODE", "ENDPOINT",
    ]  # fmt: skip
    assert len(rows) == 10
    assert {row[3] for row in rows} == {s.value for s in DeliveryStatus}
    [failure] = failed.json()["items"]
    assert (failure["status"], failure["attempts"], failure["last_status_code"]) == (
        "failed",
        2,
        500,
    )
    assert {d["status"] for d in by_endpoint.json()["items"]} == {"delivered"}
    assert len(by_endpoint.json()["items"]) == 3
    assert [d["status"] for d in by_type.json()["items"]] == ["cancelled", "cancelled"]
    assert future.out.strip() == "no deliveries"

    shown, shown_json = await asyncio.gather(
        ok(db_url, "deliveries", "show", str(failure["delivery_id"])),
        ok(db_url, "deliveries", "show", str(failure["delivery_id"]), "--json"),
    )
    assert re.search(r"^status +failed$", shown.out, re.MULTILINE)
    attempts_table = shown.out.split("\n\n")[1]
    headers, rows = table(Run(0, attempts_table, ""))
    assert headers == [
        "#", "STARTED", "CODE", "LATENCY", "OUTCOME", "ERROR", "RESPONSE", "NEXT ATTEMPT",
    ]  # fmt: skip
    assert [row[0] for row in rows] == ["1", "2"]
    assert rows[0][2:7] == ["500", "25 ms", "retry", "http_status: HTTP 500", "ok"]
    assert rows[1][4] == "failed"
    assert 'payload {"n":' in shown.out
    detail = shown_json.json()
    assert [a["outcome"] for a in detail["attempts"]] == ["retry", "failed"]
    assert detail["payload"] == {"n": 0}
    assert detail["delivery"] == failure


async def test_redeliver_and_recover(db_url: str, store: Store, conn: asyncpg.Connection) -> None:
    """recover re-queues what failed since a time; redeliver queues a new delivery of the event."""
    log = await factories.mixed_log(store, conn)
    failed = (await store.list_deliveries(status=DeliveryStatus.FAILED)).items[0]

    recovered = await ok(db_url, "recover", str(log.a), "--since", "1h")
    assert recovered.out.startswith(f"re-queued 1 delivery of endpoint {log.a} ")
    again = (await ok(db_url, "recover", str(log.a), "--since", "1h", "--json")).json()
    assert (again["endpoint_id"], again["requeued"]) == (str(log.a), 0)  # already live again

    redelivered = await ok(db_url, "deliveries", "redeliver", str(failed.delivery_id), "--json")
    new_id = redelivered.json()["new_delivery_id"]
    assert redelivered.json()["delivery_id"] == failed.delivery_id
    assert (await store.get_delivery(new_id)).delivery.event_id == failed.event_id

    assert_error(await cli(db_url, "recover", str(log.c), "--since", "1h"), 1, "is disabled")


async def test_tail_follows_new_attempts_until_count_signal_or_time(
    db_url: str, store: Store, conn: asyncpg.Connection
) -> None:
    """tail prints attempts recorded after it started, as JSON lines or lines for people."""
    endpoint_id, _ = await store.create_endpoint("acct_1", "https://example.com/h")
    await factories.emit(conn, "acct_1")
    await factories.attempt(store, endpoint_id, 200)  # before the tail: not shown

    async def start(*args: str) -> asyncio.subprocess.Process:
        proc = await asyncio.create_subprocess_exec(
            CLI, "deliveries", "tail", "--interval", "0.1", *args,
            env=cli_env(db_url), stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        assert proc.stderr is not None
        banner = await asyncio.wait_for(proc.stderr.readline(), TIMEOUT_S)
        assert banner.startswith(b"following new attempts"), banner
        return proc

    counted = await start("--json", "--count", "2", "--max-seconds", "20")
    for _ in range(3):
        await factories.emit(conn, "acct_1", "contact.created")
    await factories.attempt(store, endpoint_id, 503, excerpt="busy")
    out, err = await asyncio.wait_for(counted.communicate(), TIMEOUT_S)
    assert counted.returncode == 0, err
    lines = [json.loads(line) for line in out.decode().splitlines()]
    assert len(lines) == 2
    assert {(x["status_code"], x["outcome"], x["event_type"]) for x in lines} == {
        (503, "retry", "contact.created")
    }
    assert lines[0]["id"] < lines[1]["id"]
    assert lines[0]["response_excerpt"] == "busy"

    people = await start("--max-seconds", "20")
    await factories.make_due(conn, lines[0]["delivery_id"])
    await factories.attempt(store, endpoint_id, 0, count=1, excerpt=None)
    assert people.stdout is not None
    line = (await asyncio.wait_for(people.stdout.readline(), TIMEOUT_S)).decode()
    assert f"delivery {lines[0]['delivery_id']} #2" in line
    assert "contact.created" in line
    assert "connect: connection refused" in line
    people.send_signal(signal.SIGTERM)
    _, err = await asyncio.wait_for(people.communicate(), TIMEOUT_S)
    assert people.returncode == 0, err
    assert b"Traceback" not in err

    idle = await ok(
        db_url, "deliveries", "tail", "--max-seconds", "0.3", "--endpoint", str(endpoint_id)
    )
    assert idle.out == ""


# -- failures -------------------------------------------------------------------------------------


async def test_bad_input_is_one_line_naming_the_problem(db_url: str, store: Store) -> None:
    """Malformed ids, times, flags and refused values exit non-zero with one line, no traceback."""
    endpoint_id, _ = await store.create_endpoint("acct_1", "https://example.com/h")
    unknown = "00000000-0000-0000-0000-000000000000"
    cases: list[tuple[list[str], int, list[str]]] = [
        (["endpoints", "show", "nope"], 2, ["ENDPOINT: 'nope' is not an endpoint id"]),
        (["endpoints", "show", unknown], 1, [f"endpoint_id: no endpoint {unknown}"]),
        (["deliveries", "list", "--since", "5x"], 2, ["--since: '5x' is not a time"]),
        (["deliveries", "list", "--endpoint", "12"], 2, ["--endpoint: '12' is not an endpoint id"]),
        (["deliveries", "list", "--status", "lost"], 2, ["--status: invalid choice: 'lost'"]),
        (["deliveries", "list", "--limit", "0"], 2, ["--limit: '0' is not a number from 1"]),
        (["deliveries", "list", "--cursor", "xyz"], 2, ["cursor: is not a cursor of this list"]),
        (["deliveries", "show", "abc"], 2, ["DELIVERY: 'abc' is not a delivery id"]),
        (["deliveries", "show", "424242"], 1, ["delivery_id: no delivery 424242"]),
        (["deliveries", "redeliver", "424242"], 1, ["delivery_id: no delivery 424242"]),
        (
            ["endpoints", "add", "http://example.com/h", "--account", "a"],
            2,
            ["url: must use https"],
        ),
        (
            ["endpoints", "add", "https://example.com/h", "--account", "a", "--events", "x.y"],
            2,
            ["event_types: unknown event type 'x.y'"],
        ),
        (["endpoints", "update", str(endpoint_id)], 2, ["nothing to update"]),
        (["endpoints", "update", str(endpoint_id), "--max-in-flight", "0"], 2, ["max_in_flight"]),
        (["endpoints", "rotate-secret", str(endpoint_id), "--grace", "40d"], 2, ["grace"]),
        (["recover", str(endpoint_id)], 2, ["required: --since"]),
        (["recover", str(endpoint_id), "--since", "2999-01-01"], 2, ["since: must not be in"]),
        (["endpoints"], 2, ["required: ACTION"]),
    ]
    gate = asyncio.Semaphore(6)  # a few at a time: the server is shared with other test runs

    async def run(args: list[str]) -> Run:
        async with gate:
            return await cli(db_url, *args)

    runs = await asyncio.gather(*(run(args) for args, _, _ in cases))
    for (args, code, fragments), result in zip(cases, runs, strict=True):
        assert "Traceback" not in result.err, args
        assert_error(result, code, *fragments)


async def test_database_trouble_is_one_line(empty_db_url: str) -> None:
    """Unreachable, unmigrated or unconfigured databases fail in one line, password masked."""
    unreachable, unmigrated, unset = await asyncio.gather(
        cli("postgresql://me:hunter2@127.0.0.1:1/x", "endpoints", "list"),
        cli(empty_db_url, "deliveries", "list"),
        cli(None, "deliveries", "tail"),
    )
    assert_error(unreachable, 1, "database: cannot connect to postgresql://me:***@127.0.0.1:1/x")
    assert "hunter2" not in unreachable.err
    assert_error(unmigrated, 1, "run `misar-webhooks migrate`")
    assert_error(unset, 2, "no database: set WEBHOOKS_DATABASE_URL")


async def test_check_config_masks_secrets_and_help_lists_every_command() -> None:
    """check-config prints JSON without the password or token; --help names every command."""
    url = "postgresql://me:hunter2@db.example.com/app"
    config, usage = await asyncio.gather(
        cli(url, "check-config", env={"WEBHOOKS_ADMIN_TOKEN": "tok_verysecretvalue"}),
        cli(None, "--help"),
    )
    settings = config.json()
    assert settings["database_url"] == "postgresql://me:***@db.example.com/app"
    assert "hunter2" not in config.out
    assert "verysecretvalue" not in config.out
    for command in ("migrate", "run", "demo", "endpoints", "deliveries", "recover", "check-config"):
        assert command in usage.out
