"""Security through the whole engine: the SSRF guard on every loopback form, and secrets that never
leave the places meant for them (logs, metrics, probes, errors and CLI output are captured).

The full table of blocked addresses is checked without a network in tests/unit/test_ssrf.py;
here the engine sends nothing but to loopback, so a broken guard could not reach anything else.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from collections.abc import Awaitable, Callable
from datetime import timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import aiohttp
import asyncpg
import pytest

from engine.db.store import Store
from engine.errors import EngineError
from tests.support.engines import RunningEngine, create_endpoint, wait_until
from tests.support.load import emit_many
from tests.support.pgproxy import PgProxy
from tests.support.processes import engine_process
from tests.support.receiver import Receiver, Reply

StartEngine = Callable[..., Awaitable[RunningEngine]]

# The in-process engine may reach loopback only, even if its guard regressed; the engine
# processes of the secrets test are pointed at loopback and the proxy alone.
pytestmark = pytest.mark.usefixtures("loopback_fence")

CLI = str(Path(sys.executable).with_name("misar-webhooks"))
PASSWORD = "Pg-pass-7d1c9e0b5a"  # noqa: S105 - the secret the test looks for, not a real one
ADMIN_TOKEN = "admin-token-4f0e2b8c6d1a9e3f"  # noqa: S105 - likewise
HTTP_TIMEOUT = aiohttp.ClientTimeout(total=10)

# Loopback in every spelling; each must end as a refused attempt, none may reach the receiver.
# (Forms whose bypass would send packets elsewhere, like 6to4 or NAT64 of 127.0.0.1, are in the
# unit table only.)
GUARDED_HOSTS = {
    "127.0.0.1": "blocked_address",
    "127.0.0.2": "blocked_address",
    "0.0.0.0": "blocked_address",  # noqa: S104 - a URL host under test, not a bind address
    "[::1]": "blocked_address",
    "[::]": "blocked_address",
    "[::ffff:127.0.0.1]": "blocked_address",
    "[::ffff:7f00:1]": "blocked_address",
    "[0:0:0:0:0:ffff:127.0.0.1]": "blocked_address",
    "localhost": "blocked_address",
    "127.1": "invalid_url",  # legacy shorthand: never vetted, never dialled
    "2130706433": "invalid_url",
    "0177.0.0.1": "invalid_url",
}


async def test_ssrf_guard_refuses_every_loopback_form_through_the_engine(
    conn: asyncpg.Connection, receiver: Receiver, start_engine: StartEngine
) -> None:
    """With the guard on, endpoints naming loopback in any form (v4, v6, mapped, unspecified, the
    name localhost, legacy numerals) each get a refused attempt, and no request is made."""
    await conn.execute(
        "UPDATE webhooks.settings SET allow_http = true, allow_private_networks = false,"
        " retry_schedule = '{1 hour}'"
    )
    endpoints = {}
    for i, host in enumerate(GUARDED_HOSTS):
        for scheme in ("http", "https"):
            url = f"{scheme}://{host}:{receiver.port}/guarded"
            endpoints[url], _ = await create_endpoint(conn, url, account=f"acct_{i}_{scheme}")
    for i in range(len(GUARDED_HOSTS)):
        for scheme in ("http", "https"):
            await emit_many(conn, f"acct_{i}_{scheme}", 1)
    await start_engine()
    await wait_until(
        lambda: _count(conn, "SELECT count(*) FROM webhooks.attempts", len(endpoints)),
        what="an attempt per endpoint",
    )
    rows = await conn.fetch(
        "SELECT e.url, a.status_code, a.error_kind, a.error_message FROM webhooks.attempts a"
        " JOIN webhooks.endpoints e ON e.id = a.endpoint_id"
    )
    assert len(rows) == len(endpoints)
    for row in rows:
        host = urlsplit(row["url"]).netloc.rsplit(":", 1)[0]
        assert (row["status_code"], row["error_kind"]) == (0, GUARDED_HOSTS[host]), dict(row)
        assert row["error_message"], dict(row)
    assert receiver.received == []


async def test_turning_the_guard_on_applies_to_a_running_engine(
    conn: asyncpg.Connection, receiver: Receiver, open_policy: None, start_engine: StartEngine
) -> None:
    """A running engine that delivered to localhost refuses it from the moment the settings row
    turns private networks off, pooled connections and cached DNS answers notwithstanding."""
    await create_endpoint(conn, f"http://localhost:{receiver.port}/hook")
    await start_engine()
    await emit_many(conn, "acct_1", 3)
    await receiver.wait_for(3, path="/hook")
    await conn.execute("UPDATE webhooks.settings SET allow_private_networks = false")
    # The reload is asynchronous (NOTIFY, then a read): send probe events one at a time, each
    # once the one before has been attempted, until one is refused.
    while not await conn.fetchval(
        "SELECT count(*) FROM webhooks.attempts WHERE error_kind = 'blocked_address'"
    ):
        await emit_many(conn, "acct_1", 1)
        await wait_until(
            lambda: _all_attempted(conn),
            what="the probe attempted",
        )
    await wait_until(
        lambda: _count(
            conn,
            "SELECT count(*) FROM webhooks.deliveries WHERE lease_token IS NOT NULL",
            0,
            eq=True,
        ),
        what="no attempt in flight",
    )
    sent = len(receiver.received)
    await emit_many(conn, "acct_1", 5)
    await wait_until(
        lambda: _all_attempted(conn),
        what="every new delivery attempted",
    )
    assert len(receiver.received) == sent, "nothing reached localhost after the guard went on"
    refused = await conn.fetchval(
        "SELECT count(*) FROM webhooks.attempts WHERE error_kind = 'blocked_address'"
    )
    assert refused >= 5


async def test_turning_allow_http_off_applies_to_a_running_engine(
    conn: asyncpg.Connection, receiver: Receiver, open_policy: None, start_engine: StartEngine
) -> None:
    """A running engine that delivered over http:// while settings.allow_http was on records
    every later attempt to that endpoint as insecure_url, sending nothing, once it is off."""
    await create_endpoint(conn, receiver.url("/plain"))
    await start_engine()
    await emit_many(conn, "acct_1", 2)
    await receiver.wait_for(2, path="/plain")
    await conn.execute("UPDATE webhooks.settings SET allow_http = false")
    # The reload is asynchronous: probe one event at a time until one is refused.
    while not await conn.fetchval(
        "SELECT count(*) FROM webhooks.attempts WHERE error_kind = 'insecure_url'"
    ):
        await emit_many(conn, "acct_1", 1)
        await wait_until(
            lambda: _all_attempted(conn),
            what="the probe attempted",
        )
    sent = len(receiver.received)
    await emit_many(conn, "acct_1", 3)
    await wait_until(
        lambda: _all_attempted(conn),
        what="every new delivery attempted",
    )
    assert len(receiver.received) == sent, "nothing went over http:// once it was refused"
    kinds = await conn.fetch(
        "SELECT error_kind, count(*) AS n FROM webhooks.attempts"
        " WHERE started_at > (SELECT max(started_at) FROM webhooks.attempts"
        "                      WHERE error_kind IS NULL) GROUP BY 1"
    )
    assert {r["error_kind"]: r["n"] for r in kinds}.keys() == {"insecure_url"}


async def test_secrets_never_appear_in_logs_metrics_probes_errors_or_cli_output(
    db_url: str, conn: asyncpg.Connection, receiver: Receiver, open_policy: None
) -> None:
    """Through deliveries, failures, a secret rotation and a database outage, no endpoint secret,
    database password or admin token shows in the engine's log, /metrics, /readyz, refusal
    messages or the output of the CLI's read commands."""
    # A claim in flight at the cut may still commit on the server: its leases must run out soon.
    await conn.execute(
        "UPDATE webhooks.settings SET request_timeout_s = 3, lease_duration = '15 seconds'"
    )
    receiver.script("/fail", Reply(status=500, body=b"nope"))
    receiver.script("/reset", Reply(reset=True))
    secrets: list[str] = []
    endpoint_ids = []
    for path in ("/ok", "/fail", "/reset"):
        endpoint_id, secret = await create_endpoint(
            conn, receiver.url(path), account="acct" + path.replace("/", "_")
        )
        endpoint_ids.append(endpoint_id)
        secrets.append(secret)
    url = _with_password(db_url, PASSWORD)
    env = {"WEBHOOKS_ADMIN_TOKEN": ADMIN_TOKEN, "WEBHOOKS_LOG_LEVEL": "debug"}
    outputs: dict[str, str] = {}

    pool = await asyncpg.create_pool(db_url, min_size=1, max_size=2)
    store = Store(pool)
    try:
        async with PgProxy(url) as proxy, engine_process(proxy.url, env) as engine:
            admin_url = await engine.admin_url()
            await _emit_all(conn, 5)
            await receiver.wait_for(5, path="/ok", timeout_s=30)
            # Rotation: the old secret stays valid for a day, so both sign from now on.
            secrets.append(await store.rotate_secret(endpoint_ids[0], timedelta(days=1)))
            await _emit_all(conn, 5)
            await receiver.wait_for(10, path="/ok", timeout_s=30)
            proxy.cut()
            await _emit_all(conn, 5)
            await wait_until(
                lambda: _not_ready(admin_url), timeout_s=60, what="/readyz to report the outage"
            )
            outputs["readyz during the outage"] = await _get(admin_url + "/readyz")
            proxy.restore()
            await receiver.wait_for(15, path="/ok", timeout_s=60)
            outputs["/metrics"] = await _get(admin_url + "/metrics", ADMIN_TOKEN)
            outputs["/readyz"] = await _get(admin_url + "/readyz")
            engine.signal(signal.SIGTERM)
            assert await engine.wait() == 0
        outputs["engine log"] = "\n".join(engine.lines)
        outputs.update(await _refusals(store, endpoint_ids[0], secrets))
    finally:
        await pool.close()
    delivery_id = await conn.fetchval("SELECT min(delivery_id) FROM webhooks.delivery_outcomes")
    outputs.update(await _cli_outputs(url, str(endpoint_ids[0]), str(delivery_id)))

    assert outputs["/metrics"].startswith("200 ")
    assert "misar_webhooks_attempts" in outputs["/metrics"]
    assert "not_ready" in outputs["readyz during the outage"]
    assert all(message for message in outputs.values())
    logged = {e.get("event") for e in engine.events()}
    assert {"attempt_recorded", "results_write_failed"} <= logged, "failure paths were logged"
    signatures = [r.headers["X-MisarMail-Signature"] for r in receiver.received_on("/ok")]
    assert signatures[-1].count("v1=") == 2, "deliveries after the rotation carry both secrets"
    needles = {
        "database password": PASSWORD,
        "admin token": ADMIN_TOKEN,
        **{f"secret {i}": s for i, s in enumerate(secrets)},
        **{f"secret {i} key": s.removeprefix("whsec_") for i, s in enumerate(secrets)},
    }
    leaks = [
        (what, where)
        for where, text in outputs.items()
        for what, needle in needles.items()
        if needle in text
    ]
    assert not leaks, f"secrets leaked: {leaks}"


async def _emit_all(conn: asyncpg.Connection, n: int) -> None:
    for path in ("/ok", "/fail", "/reset"):
        await emit_many(conn, "acct" + path.replace("/", "_"), n)


async def _refusals(store: Store, endpoint_id: Any, secrets: list[str]) -> dict[str, str]:
    """The messages of refused calls that were handed a secret (or something close to one)."""
    near_misses = [
        "whsec_" + secrets[0].removeprefix("whsec_")[:20],  # too short a key
        secrets[0] + "!",  # not base64
        secrets[-1],  # the current secret again
    ]
    messages = {}
    for i, candidate in enumerate(near_misses):
        try:
            await store.rotate_secret(endpoint_id, timedelta(0), candidate)
        except EngineError as exc:
            messages[f"rotate refusal {i}"] = str(exc)
        else:
            raise AssertionError(f"rotate_secret accepted {i}")
        try:
            await store.create_endpoint("acct_x", "https://h.example.invalid/", secret=candidate)
        except EngineError as exc:
            messages[f"create refusal {i}"] = str(exc)
    return messages


async def _cli_outputs(url: str, endpoint_id: str, delivery_id: str) -> dict[str, str]:
    """stdout and stderr of the CLI's read commands (none of them prints a secret on purpose)."""
    commands = {
        "endpoints list": ["endpoints", "list", "--json"],
        "endpoints show": ["endpoints", "show", endpoint_id, "--json"],
        "endpoints show (table)": ["endpoints", "show", endpoint_id],
        "deliveries list": ["deliveries", "list", "--json"],
        "deliveries show": ["deliveries", "show", delivery_id, "--json"],
        "check-config": ["check-config"],
        "unreachable database": ["--database-url", _unreachable(url), "endpoints", "list"],
    }
    env = {k: v for k, v in os.environ.items() if not k.startswith("WEBHOOKS_")}
    env |= {"WEBHOOKS_DATABASE_URL": url, "WEBHOOKS_ADMIN_TOKEN": ADMIN_TOKEN}

    async def run(args: list[str]) -> str:
        proc = await asyncio.create_subprocess_exec(
            CLI,
            *args,
            env=env,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        out, err = await asyncio.wait_for(proc.communicate(), timeout=60)
        return out.decode() + err.decode()

    results = await asyncio.gather(*(run(args) for args in commands.values()))
    return dict(zip(commands, results, strict=True))


async def _get(url: str, token: str | None = None) -> str:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    async with (
        aiohttp.ClientSession(timeout=HTTP_TIMEOUT) as session,
        session.get(url, headers=headers) as response,
    ):
        return f"{response.status} {dict(response.headers)} {await response.text()}"


async def _not_ready(admin_url: str) -> bool:
    return (await _get(admin_url + "/readyz")).startswith("503 ")


def _with_password(url: str, password: str) -> str:
    """``url`` with ``password`` added to its user (trust auth ignores it; the engine must too)."""
    parts = urlsplit(url)
    user, _, host = parts.netloc.rpartition("@")
    return urlunsplit(parts._replace(netloc=f"{user}:{password}@{host}"))


def _unreachable(url: str) -> str:
    """``url`` pointing at a port nothing listens on."""
    parts = urlsplit(url)
    credentials = parts.netloc.rpartition("@")[0]
    return urlunsplit(parts._replace(netloc=f"{credentials}@127.0.0.1:1"))


async def _count(conn: asyncpg.Connection, sql: str, n: int, *, eq: bool = False) -> bool:
    value = int(await conn.fetchval(sql))
    return value == n if eq else value >= n


async def _all_attempted(conn: asyncpg.Connection) -> bool:
    """Every accepted event fanned out, and every delivery attempted at least once (one snapshot:
    a fan-out between two reads cannot slip a new delivery past the check)."""
    return bool(
        await conn.fetchval(
            "SELECT NOT EXISTS (SELECT FROM webhooks.intake)"
            " AND NOT EXISTS (SELECT FROM webhooks.deliveries WHERE attempts = 0)"
        )
    )
