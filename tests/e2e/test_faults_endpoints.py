"""Hostile and broken endpoints through the whole engine (a real ``misar-webhooks run`` process).

Each misbehaviour must end as a recorded failed attempt with a clear error kind, within the request
timeout and the excerpt cap, while a healthy endpoint beside them is delivered to as if they were
not there. The engine runs as a process so that its peak memory can be read from /proc.
"""

from __future__ import annotations

import signal
import ssl
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import asyncpg
import pytest
import trustme

from tests.support.engines import create_endpoint, wait_until
from tests.support.load import emit_many
from tests.support.processes import engine_process
from tests.support.receiver import MIB, Receiver, Reply

REQUEST_TIMEOUT_S = 10.0  # the product's default
EXCERPT_BYTES = 16_384
EVENTS_PER_HOSTILE = 4
HEALTHY_EVENTS = 300
MEMORY_CAP_KIB = 100 * 1024
# Attempts end at the deadline; the slack covers a busy machine between deadline and record.
DURATION_SLACK_MS = 5_000


@dataclass(frozen=True)
class Hostile:
    """A misbehaving endpoint and the error kinds its attempts may end with."""

    reply: Reply
    kinds: frozenset[str]
    status: int = 0
    slow: bool = False  # holds its attempts until the request timeout


def hostile_endpoints(receiver: Receiver) -> dict[str, Hostile]:
    """Path -> misbehaviour, on ``receiver`` (the redirect points back at it)."""
    return {
        # The status line itself arrives one byte every 0.25 s: headers never complete.
        "/slowloris": Hostile(
            Reply(raw=b"HTTP/1.1 200 OK\r\nX-Slow: " + b"s" * 1000, drip_s=0.25),
            frozenset({"timeout"}),
            slow=True,
        ),
        "/hang": Hostile(Reply(delay_s=600), frozenset({"timeout"}), slow=True),
        "/drip-body": Hostile(
            Reply(status=503, body=b"d" * 1000, drip_s=0.2),
            frozenset({"http_status"}),
            status=503,
            slow=True,
        ),
        "/endless": Hostile(
            Reply(status=500, endless=True), frozenset({"http_status"}), status=500
        ),
        "/huge": Hostile(
            Reply(status=500, extra_body_bytes=200 * MIB), frozenset({"http_status"}), status=500
        ),
        "/big-headers": Hostile(Reply(header_bytes=256 * 1024), frozenset({"protocol"})),
        "/garbage": Hostile(Reply(raw=b"\x00\xffNOT HTTP AT ALL\r\n\r\n"), frozenset({"protocol"})),
        "/reset": Hostile(Reply(reset=True), frozenset({"disconnected", "connect"})),
        "/redirect": Hostile(
            Reply.redirect(receiver.url("/internal")), frozenset({"redirect"}), status=302
        ),
        "/ra-huge": Hostile(Reply.retry_after("9" * 30), frozenset({"http_status"}), status=429),
        "/ra-negative": Hostile(Reply.retry_after("-120"), frozenset({"http_status"}), status=429),
        "/ra-malformed": Hostile(
            Reply.retry_after("soon, maybe tomorrow"), frozenset({"http_status"}), status=429
        ),
        "/ra-far-date": Hostile(
            Reply.retry_after("Fri, 31 Dec 9999 23:59:59 GMT"),
            frozenset({"http_status"}),
            status=429,
        ),
        "/gone": Hostile(Reply(status=410), frozenset({"http_status"}), status=410),
    }


# Seconds from an attempt to its retry under a one-hour schedule: Retry-After is honoured only
# within [delay, 2 x delay].
RETRY_IN_S = {
    "/ra-huge": 7200.0,
    "/ra-negative": 3600.0,
    "/ra-malformed": 3600.0,
    "/ra-far-date": 7200.0,
}


@pytest.mark.slow
async def test_hostile_endpoints_fail_cleanly_without_slowing_a_healthy_one(
    db_url: str, conn: asyncpg.Connection, receiver: Receiver, open_policy: None
) -> None:
    """Slowloris, endless and huge bodies, enormous headers, garbage, resets, bad TLS, redirects,
    hostile Retry-After values and 410 each end as a failed attempt with a clear error kind, within
    the timeout and the memory cap, while a healthy endpoint beside them gets all its events."""
    await conn.execute("UPDATE webhooks.settings SET retry_schedule = '{1 hour}'")
    hostile = hostile_endpoints(receiver)
    untrusted = trustme.CA()
    tls_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    untrusted.issue_cert("127.0.0.1").configure_cert(tls_context)
    async with Receiver(ssl_context=tls_context) as tls_receiver:
        urls = {path: receiver.url(path) for path in hostile}
        urls["/tls"] = tls_receiver.url("/tls")
        endpoints: dict[str, Any] = {}
        for path, url in urls.items():
            if path in hostile:
                receiver.script(path, hostile[path].reply)
            endpoints[path], _ = await create_endpoint(conn, url, account=_account(path))
        healthy, _ = await create_endpoint(conn, receiver.url("/healthy"), account="healthy")
        for path in urls:
            await emit_many(conn, _account(path), EVENTS_PER_HOSTILE)
        await emit_many(conn, "healthy", HEALTHY_EVENTS)

        env = {
            "WEBHOOKS_REQUEST_TIMEOUT_S": str(REQUEST_TIMEOUT_S),
            "WEBHOOKS_SHUTDOWN_GRACE_S": str(REQUEST_TIMEOUT_S + 5),
        }
        async with engine_process(db_url, env) as engine:
            await engine.logged("engine_started")
            baseline_kib, _ = engine.memory_kib()
            await wait_until(
                _attempted(conn, healthy, HEALTHY_EVENTS),
                timeout_s=120,
                what="the healthy endpoint's deliveries",
            )
            # Every /hang request arrived at once and is held (its retries are an hour away).
            assert len(receiver.received_on("/hang")) == EVENTS_PER_HOSTILE

            for path in urls:
                # The 410 disables its endpoint at once: the other deliveries are cancelled.
                expected = 1 if path == "/gone" else EVENTS_PER_HOSTILE
                await wait_until(
                    _attempted(conn, endpoints[path], expected),
                    timeout_s=REQUEST_TIMEOUT_S * 4,
                    what=f"the attempts of {path}",
                )
            _, peak_kib = engine.memory_kib()
            engine.signal(signal.SIGTERM)
            assert await engine.wait() == 0
        assert tls_receiver.received == [], "nothing was sent over the untrusted connection"

    assert peak_kib - baseline_kib < MEMORY_CAP_KIB, f"RSS grew {peak_kib - baseline_kib} KiB"
    assert receiver.received_on("/internal") == [], "the redirect was not followed"
    logged = engine.events()
    assert not [e for e in logged if e.get("level") in ("error", "critical")]
    assert not [e for e in logged if e.get("event") == "attempt_crashed"]

    # The healthy endpoint did not wait for the slow ones: while each slow endpoint held its
    # first attempt (from its start to its recorded end), healthy attempts were starting. Read
    # from the recorded times, so a loaded machine that slows everything cannot fail it.
    for path, misbehaviour in hostile.items():
        if misbehaviour.slow:
            overlapping = await conn.fetchval(
                """WITH slow AS (
                       SELECT started_at, started_at + make_interval(secs => duration_ms / 1000.0)
                              AS ended_at
                         FROM webhooks.attempts WHERE endpoint_id = $1
                        ORDER BY started_at LIMIT 1)
                   SELECT count(*) FROM webhooks.attempts a, slow
                    WHERE a.endpoint_id = $2
                      AND a.started_at > slow.started_at AND a.started_at < slow.ended_at""",
                endpoints[path],
                healthy,
            )
            assert overlapping > 0, f"no healthy attempt started while {path} held its first"

    kinds = {**{p: h.kinds for p, h in hostile.items()}, "/tls": frozenset({"tls"})}
    print(f"engine RSS {baseline_kib} KiB at start, peak {peak_kib} KiB")
    for path, allowed in kinds.items():
        rows = await conn.fetch(
            "SELECT status_code, error_kind, error_message, duration_ms, response_excerpt,"
            " outcome, extract(epoch FROM next_attempt_at - started_at) AS retry_in_s"
            " FROM webhooks.attempts WHERE endpoint_id = $1",
            endpoints[path],
        )
        status = hostile[path].status if path in hostile else 0
        print(path, sorted({(r["error_kind"], r["outcome"], r["error_message"]) for r in rows}))
        for row in rows:
            assert row["error_kind"] in allowed, (path, dict(row))
            assert row["status_code"] == status, (path, dict(row))
            assert row["error_message"], path
            assert row["duration_ms"] <= REQUEST_TIMEOUT_S * 1000 + DURATION_SLACK_MS, path
            assert len((row["response_excerpt"] or "").encode()) <= EXCERPT_BYTES, path
            # The 410 that disabled /gone cancelled the deliveries still in flight beside it:
            # their own 410s came back for deliveries that had ended, and are logged as stale.
            assert row["outcome"] in ({"failed", "stale"} if path == "/gone" else {"retry"}), path
            if path in RETRY_IN_S:
                assert RETRY_IN_S[path] <= row["retry_in_s"] <= RETRY_IN_S[path] + 60, path
    excerpts = await conn.fetch(
        "SELECT length(response_excerpt) AS n FROM webhooks.attempts WHERE endpoint_id = $1",
        endpoints["/endless"],
    )
    assert {r["n"] for r in excerpts} == {EXCERPT_BYTES}, "the excerpt is read up to its cap"
    gone_outcomes = await conn.fetch(
        "SELECT outcome FROM webhooks.attempts WHERE endpoint_id = $1", endpoints["/gone"]
    )
    assert [r["outcome"] for r in gone_outcomes].count("failed") == 1
    gone = await conn.fetchrow(
        "SELECT enabled, disabled_reason FROM webhooks.endpoints WHERE id = $1", endpoints["/gone"]
    )
    assert gone is not None
    assert (gone["enabled"], gone["disabled_reason"]) == (False, "endpoint answered 410 Gone")


def _account(path: str) -> str:
    return "acct" + path.replace("/", "_")


async def _recorded(conn: asyncpg.Connection, endpoint_id: Any) -> int:
    return int(
        await conn.fetchval(
            "SELECT count(*) FROM webhooks.attempts WHERE endpoint_id = $1", endpoint_id
        )
    )


def _attempted(conn: asyncpg.Connection, endpoint_id: Any, n: int) -> Callable[[], Awaitable[bool]]:
    """A wait_until predicate: at least ``n`` attempts of the endpoint are recorded."""

    async def check() -> bool:
        return await _recorded(conn, endpoint_id) >= n

    return check
