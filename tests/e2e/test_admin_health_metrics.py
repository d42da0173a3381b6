"""The admin server over real HTTP: health and readiness probes, Prometheus metrics, the token."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import pytest
from prometheus_client.parser import text_string_to_metric_families

from engine.config import Settings
from engine.errors import ConfigError
from tests.support.engines import RunningEngine, create_endpoint, delivery_counts, wait_until
from tests.support.receiver import Receiver, Reply

StartEngine = Callable[..., Awaitable[RunningEngine]]

CLI = Path(sys.executable).with_name("misar-webhooks")
TOKEN = "test-admin-token-0123456789abcdef"  # noqa: S105 - a test token, not a secret
ALL_OK = {"database": "ok", "migrations": "ok", "listener": "ok", "engine": "ok"}
READY = {"status": "ready", "checks": ALL_OK}
HTTP_TIMEOUT = aiohttp.ClientTimeout(total=10)


@dataclass(frozen=True)
class Answer:
    """One HTTP response, read whole."""

    status: int
    headers: dict[str, str]
    text: str
    json: Any


async def get(running: RunningEngine, path: str, token: str | None = None) -> Answer:
    """GET ``path`` from the engine's admin server, with a bearer token when given."""
    assert running.engine.admin_url is not None, "the admin server is not listening"
    headers = {"Authorization": f"Bearer {token}"} if token is not None else {}
    return await get_url(running.engine.admin_url + path, headers)


async def get_url(url: str, headers: dict[str, str]) -> Answer:
    """GET ``url`` with ``headers``; the body is parsed as JSON when it says it is JSON."""
    async with (
        aiohttp.ClientSession(timeout=HTTP_TIMEOUT) as session,
        session.get(url, headers=headers) as response,
    ):
        text = await response.text()
        body = await response.json() if response.content_type == "application/json" else None
        return Answer(response.status, dict(response.headers), text, body)


Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


async def scrape(running: RunningEngine, token: str | None = None) -> Samples:
    """/metrics parsed with prometheus_client's own parser: (sample name, labels) -> value."""
    answer = await get(running, "/metrics", token)
    assert answer.status == 200, answer.text
    assert answer.headers["Content-Type"].startswith("text/plain")
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(answer.text)
        for sample in family.samples
    }


def by_label(samples: Samples, name: str, label: str) -> dict[str, float]:
    """The series of ``name`` keyed by the value of their one label ``label``."""
    return {
        dict(labels)[label]: value
        for (sample, labels), value in samples.items()
        if sample == name and label in dict(labels)
    }


def value(samples: Samples, name: str) -> float:
    """The value of the unlabelled series ``name``."""
    return samples[(name, frozenset())]


async def readyz_is(running: RunningEngine, status: int, body: dict[str, Any]) -> bool:
    """True when /readyz answers ``status`` with exactly ``body``."""
    answer = await get(running, "/readyz")
    return answer.status == status and answer.json == body


@contextlib.asynccontextmanager
async def connections_refused(conn: asyncpg.Connection, server_url: str) -> AsyncIterator[None]:
    """New connections to ``conn``'s database are refused (even a superuser's) until exit.

    Open connections stay; the change is made from another database, as Postgres requires.
    """
    name = await conn.fetchval("SELECT current_database()")
    admin = await asyncpg.connect(server_url)
    try:
        await admin.execute(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS false')
        try:
            yield
        finally:
            await admin.execute(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS true')
    finally:
        await admin.close()


async def test_healthz_answers_200_without_a_token(start_engine: StartEngine) -> None:
    """/healthz answers 200 while the engine serves, even when a token guards everything else."""
    running = await start_engine(admin_token=TOKEN)
    answer = await get(running, "/healthz")
    assert (answer.status, answer.json) == (200, {"status": "ok"})


async def test_readyz_is_ready_when_every_check_passes(start_engine: StartEngine) -> None:
    """/readyz answers 200 once the database answers, the listener is up and the schema current."""
    running = await start_engine(admin_token=TOKEN)
    await wait_until(lambda: readyz_is(running, 200, READY), what="/readyz ready")


async def test_readyz_does_not_wait_for_a_listener_that_is_turned_off(
    start_engine: StartEngine,
) -> None:
    """With LISTEN off, /readyz reports the listener as disabled and is still ready."""
    running = await start_engine(listen=False)
    answer = await get(running, "/readyz")
    assert answer.status == 200
    assert answer.json["checks"] == {**ALL_OK, "listener": "disabled"}


async def test_readyz_names_the_listener_while_it_cannot_reconnect(
    conn: asyncpg.Connection, pg_server_url: str, start_engine: StartEngine
) -> None:
    """A killed listener that cannot reconnect makes /readyz 503 naming only the listener."""
    running = await start_engine()
    listener = running.engine.listener
    assert listener is not None
    await wait_until(lambda: readyz_is(running, 200, READY), what="/readyz ready")
    pid = listener.backend_pid
    async with connections_refused(conn, pg_server_url):
        await conn.execute("SELECT pg_terminate_backend($1)", pid)
        down = {
            "status": "not_ready",
            "checks": {**ALL_OK, "listener": "disconnected"},
            "failed": ["listener"],
        }
        await wait_until(lambda: readyz_is(running, 503, down), what="/readyz naming the listener")
    await wait_until(lambda: readyz_is(running, 200, READY), what="/readyz ready again")
    assert listener.backend_pid != pid
    samples = await scrape(running)
    assert value(samples, "misar_webhooks_listener_reconnects_total") == 1
    assert value(samples, "misar_webhooks_listener_connected") == 1


async def test_readyz_names_the_database_while_it_is_unreachable(
    conn: asyncpg.Connection, pg_server_url: str, start_engine: StartEngine
) -> None:
    """With every engine connection killed and new ones refused, /readyz names the database."""
    running = await start_engine()
    await wait_until(lambda: readyz_is(running, 200, READY), what="/readyz ready")
    async with connections_refused(conn, pg_server_url):
        await conn.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
            " WHERE datname = current_database() AND pid <> pg_backend_pid()"
        )
        down = {
            "status": "not_ready",
            "checks": {
                "database": "unreachable",
                "migrations": "unknown",
                "listener": "disconnected",
                "engine": "ok",
            },
            "failed": ["database", "migrations", "listener"],
        }
        await wait_until(lambda: readyz_is(running, 503, down), what="/readyz naming the database")
        assert (await get(running, "/healthz")).status == 200, "alive, though not ready"
    await wait_until(lambda: readyz_is(running, 200, READY), what="/readyz ready again")


async def test_readyz_names_migrations_when_the_schema_changed_under_the_engine(
    conn: asyncpg.Connection, start_engine: StartEngine
) -> None:
    """A function file recorded with another checksum makes /readyz 503 naming migrations."""
    running = await start_engine()
    await wait_until(lambda: readyz_is(running, 200, READY), what="/readyz ready")
    await conn.execute(
        "UPDATE webhooks.schema_functions SET sha256 = 'changed'"
        " WHERE name = (SELECT min(name) FROM webhooks.schema_functions)"
    )
    answer = await get(running, "/readyz")
    assert answer.status == 503
    assert answer.json == {
        "status": "not_ready",
        "checks": {**ALL_OK, "migrations": "outdated"},
        "failed": ["migrations"],
    }


async def test_during_the_drain_probes_answer_not_ready_then_the_server_stops(
    conn: asyncpg.Connection, receiver: Receiver, open_policy: None, start_engine: StartEngine
) -> None:
    """While a stop waits for an attempt in flight, /readyz says stopping; then the port closes."""
    receiver.script("/slow", Reply(delay_s=2.0))
    await create_endpoint(conn, receiver.url("/slow"))
    running = await start_engine(request_timeout_s=5, shutdown_grace_s=6)
    await conn.execute("SELECT webhooks.emit('acct_1', 'email.sent', '{}')")
    await receiver.wait_for(1, "/slow")
    running.stop_event.set()
    answer = await get(running, "/readyz")
    assert answer.status == 503
    assert answer.json["checks"]["engine"] == "stopping"  # the listener has stopped already
    assert (await get(running, "/healthz")).status == 200
    await running.stop()
    assert await delivery_counts(conn) == {"delivered": 1}, "the drain finished the attempt"
    with pytest.raises(aiohttp.ClientConnectionError):
        await get(running, "/healthz")


async def test_metrics_count_exactly_the_attempts_that_happened(
    conn: asyncpg.Connection, receiver: Receiver, open_policy: None, start_engine: StartEngine
) -> None:
    """After 500s, then 200s, a reset and 404s to exhaustion, /metrics counts each attempt once."""
    receiver.script("/flaky", Reply(status=500), Reply(status=500), Reply(status=200))
    receiver.script("/broken", Reply(reset=True), Reply(status=404))
    await create_endpoint(conn, receiver.url("/flaky"), account="flaky")
    await create_endpoint(conn, receiver.url("/broken"), account="broken")
    running = await start_engine(metrics_refresh_s=0.1)
    for _ in range(3):
        await conn.execute("SELECT webhooks.emit('flaky', 'email.sent', '{}')")
    await conn.execute("SELECT webhooks.emit('broken', 'email.sent', '{}')")

    # /flaky: two first attempts get 500 and are retried once each (2 + 3 attempts);
    # /broken: a reset, then 404 until the schedule (three 1 s retries) is spent (4 attempts).
    outcomes = {"delivered": 3, "retry": 5, "failed": 1, "stale": 0}
    classes = {"2xx": 3, "3xx": 0, "4xx": 3, "5xx": 2, "transport_error": 1, "other": 0}

    async def counted() -> bool:
        samples = await scrape(running)
        return (
            by_label(samples, "misar_webhooks_delivery_outcomes_total", "outcome") == outcomes
            and by_label(samples, "misar_webhooks_attempts_total", "status_class") == classes
        )

    await wait_until(counted, what="every attempt counted")
    assert await delivery_counts(conn) == {"delivered": 3, "failed": 1}
    rows = await conn.fetch("SELECT outcome, count(*) AS n FROM webhooks.attempts GROUP BY 1")
    assert {r["outcome"]: r["n"] for r in rows} == {k: n for k, n in outcomes.items() if n}

    samples = await scrape(running)
    assert value(samples, "misar_webhooks_attempt_duration_seconds_count") == 9
    assert value(samples, "misar_webhooks_first_attempt_latency_seconds_count") == 4
    latency_sum = value(samples, "misar_webhooks_first_attempt_latency_seconds_sum")
    assert 0 <= latency_sum < 4 * 10, "each first attempt started within seconds of its commit"
    assert value(samples, "misar_webhooks_results_buffered") == 0
    assert value(samples, "misar_webhooks_listener_connected") == 1
    assert value(samples, "misar_webhooks_listener_reconnects_total") == 0
    assert 0 <= value(samples, "misar_webhooks_pg_notification_queue_usage_ratio") < 1
    await wait_until(
        lambda: _depths_are(running, {"due": 0, "in_flight": 0, "retry_waiting": 0, "accepted": 0}),
        what="an empty queue counted",
    )
    labels = {k for (_, labelset) in samples for k, _ in labelset}
    assert labels <= {"outcome", "status_class", "state", "le"}, "no per-endpoint labels"
    assert "http://" not in (await get(running, "/metrics")).text, "no URLs in metrics"


async def test_queue_depth_gauges_count_due_in_flight_and_retry_waiting(
    conn: asyncpg.Connection, receiver: Receiver, open_policy: None, start_engine: StartEngine
) -> None:
    """The depth gauges show one attempt in flight, two due behind it and one waiting to retry."""
    await conn.execute("UPDATE webhooks.settings SET retry_schedule = '{1 hour}'")
    receiver.script("/slow", Reply(delay_s=3.0))
    receiver.script("/down", Reply(status=500))
    await create_endpoint(conn, receiver.url("/slow"), account="slow", ordering="strict")
    await create_endpoint(conn, receiver.url("/down"), account="down")
    running = await start_engine(metrics_refresh_s=0.1, request_timeout_s=5, shutdown_grace_s=6)
    await conn.execute("SELECT webhooks.emit('down', 'email.sent', '{}')")
    await receiver.wait_for(1, "/down")
    for _ in range(3):
        await conn.execute("SELECT webhooks.emit('slow', 'email.sent', '{}')")
    # Strict ordering: the first /slow delivery is in flight for 3 s; the other two wait, due.
    await wait_until(
        lambda: _depths_are(running, {"due": 2, "in_flight": 1, "retry_waiting": 1, "accepted": 0}),
        what="the depths counted",
    )
    samples = await scrape(running)
    assert value(samples, "misar_webhooks_actors") >= 1
    # The actors' supervisors and the attempt in flight are tasks of the engine's loop.
    assert value(samples, "misar_webhooks_tasks") > value(samples, "misar_webhooks_actors")
    assert value(samples, "misar_webhooks_queue_depth_updated_timestamp_seconds") > 0


async def test_queue_depth_gauge_counts_events_waiting_in_the_intake(
    db_url: str,
    conn: asyncpg.Connection,
    receiver: Receiver,
    open_policy: None,
    start_engine: StartEngine,
) -> None:
    """Accepted events that no claim could fan out yet (another session holds the fan-out's lock)
    show as accepted, with no deliveries; once the lock goes, they are fanned out and sent."""
    await create_endpoint(conn, receiver.url("/hook"))
    running = await start_engine(metrics_refresh_s=0.1)
    holder = await asyncpg.connect(db_url)
    try:
        await holder.execute("SELECT pg_advisory_lock(hashtext('webhooks.fan_out'))")
        for _ in range(3):
            await conn.execute("SELECT webhooks.emit('acct_1', 'email.sent', '{}')")
        await wait_until(
            lambda: _depths_are(
                running, {"due": 0, "in_flight": 0, "retry_waiting": 0, "accepted": 3}
            ),
            what="three events counted as accepted",
        )
        assert await conn.fetchval("SELECT count(*) FROM webhooks.deliveries") == 0
    finally:
        await holder.close()  # its session lock goes with it
    await receiver.wait_for(3, "/hook")
    await wait_until(
        lambda: _depths_are(running, {"due": 0, "in_flight": 0, "retry_waiting": 0, "accepted": 0}),
        what="the intake counted empty",
    )


async def test_metrics_require_the_token_when_one_is_set(start_engine: StartEngine) -> None:
    """With a token set, /metrics answers 401 JSON without it or with a wrong one, 200 with it."""
    running = await start_engine(admin_token=TOKEN)
    for token in (None, "wrong-token-0123456789abcdef", TOKEN + "x", ""):
        answer = await get(running, "/metrics", token)
        assert answer.status == 401, token
        assert answer.json["error"]["code"] == "unauthorized"
        assert answer.headers["WWW-Authenticate"] == "Bearer"
        assert TOKEN not in answer.text
    assert running.engine.admin_url is not None
    basic = await get_url(
        running.engine.admin_url + "/metrics", {"Authorization": f"Basic {TOKEN}"}
    )
    assert basic.status == 401, "only the Bearer scheme is accepted"
    assert (await get(running, "/nowhere")).status == 401, "unknown paths are not revealed"
    assert (await get(running, "/metrics", TOKEN)).status == 200
    assert (await get(running, "/readyz")).status == 200, "probes need no token"


async def test_errors_are_json_naming_what_was_wrong(start_engine: StartEngine) -> None:
    """Unknown paths and methods answer the JSON error shape the admin API shares."""
    running = await start_engine()
    missing = await get(running, "/v1/nothing")
    assert missing.status == 404
    assert missing.json == {
        "error": {"status": 404, "code": "not_found", "message": "Not Found: GET /v1/nothing"}
    }
    assert running.engine.admin_url is not None
    async with (
        aiohttp.ClientSession(timeout=HTTP_TIMEOUT) as session,
        session.post(running.engine.admin_url + "/metrics") as response,
    ):
        assert response.status == 405
        assert (await response.json())["error"]["code"] == "method_not_allowed"
        assert response.headers["Allow"] == "GET,HEAD"


def test_config_refuses_a_non_loopback_admin_host_without_a_token() -> None:
    """Settings refuse an admin host beyond loopback unless a (long enough) token is set."""
    public = ("0.0.0.0", "::", "10.1.2.3", "admin.example.com", "")  # noqa: S104 - refused
    for host in public:
        with pytest.raises(ConfigError) as caught:
            Settings.from_env({"WEBHOOKS_ADMIN_HOST": host or " "})
        assert "WEBHOOKS_ADMIN_HOST" in str(caught.value)
        assert "WEBHOOKS_ADMIN_TOKEN" in str(caught.value)
        assert caught.value.field == "admin_host"
        assert Settings(admin_host=host, admin_token=TOKEN).admin_host == host
    for host in ("127.0.0.1", "127.0.0.2", "::1", "[::1]", "localhost", "LOCALHOST"):
        assert Settings(admin_host=host).admin_token is None
    with pytest.raises(ConfigError) as short:
        Settings(admin_token="tiny-tok")  # noqa: S106 - a test token, not a secret
    assert "WEBHOOKS_ADMIN_TOKEN" in str(short.value)
    assert "tiny-tok" not in str(short.value), "the token is never echoed"


async def test_run_refuses_to_start_with_a_public_admin_host_and_no_token() -> None:
    """`misar-webhooks run` exits 2 with one line naming both variables, before touching a DB."""
    env = {
        "PATH": "/usr/bin:/bin",
        "WEBHOOKS_DATABASE_URL": "postgresql://nobody@127.0.0.1:1/none",
        "WEBHOOKS_ADMIN_HOST": "0.0.0.0",  # noqa: S104 - what the test shows is refused
    }
    process = await asyncio.create_subprocess_exec(
        str(CLI), "run", env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    stdout, stderr = await asyncio.wait_for(process.communicate(), timeout=30)
    message = stderr.decode()
    assert process.returncode == 2, message
    assert message.count("\n") == 1, message
    assert message.startswith("misar-webhooks: error: WEBHOOKS_ADMIN_HOST='0.0.0.0'")
    assert "WEBHOOKS_ADMIN_TOKEN" in message
    assert stdout == b""


async def test_a_taken_admin_port_fails_the_start(start_engine: StartEngine) -> None:
    """An admin port another process holds makes the engine refuse to start, naming the port."""
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        with pytest.raises(ConfigError) as caught:
            await start_engine(admin_port=port)
    assert f"127.0.0.1:{port}" in str(caught.value)
    assert "WEBHOOKS_ADMIN_PORT" in str(caught.value)


async def _depths_are(running: RunningEngine, expected: dict[str, float]) -> bool:
    samples = await scrape(running)
    return by_label(samples, "misar_webhooks_queue_depth", "state") == expected
