"""The engine end to end: signed deliveries, retries, and the outcomes it records."""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from datetime import timedelta

import asyncpg
import pytest
import standardwebhooks

from engine import SignatureError, verify_signature
from tests.support.engines import RunningEngine, create_endpoint, delivery_counts, wait_until
from tests.support.receiver import MIB, Receiver, Reply

StartEngine = Callable[..., Awaitable[RunningEngine]]


async def test_delivers_signed_envelope_verifiable_by_both_schemes(
    conn: asyncpg.Connection, receiver: Receiver, open_policy: None, start_engine: StartEngine
) -> None:
    """A delivery carries the envelope and verifies with our helper and a Standard Webhooks lib."""
    _, secret = await create_endpoint(conn, receiver.url("/hook"))
    await start_engine()
    event_id = await conn.fetchval(
        "SELECT webhooks.emit('acct_1', 'email.opened', '{\"email\": \"a@b.c\"}')"
    )
    (request,) = await receiver.wait_for(1, "/hook")
    envelope = json.loads(request.body)
    assert envelope["id"] == f"evt_{event_id}"
    assert envelope["type"] == "email.opened"
    assert envelope["account_id"] == "acct_1"
    assert envelope["data"] == {"email": "a@b.c"}
    assert request.headers["Content-Type"] == "application/json"
    assert request.headers["X-MisarMail-Event"] == "email.opened"
    verify_signature(request.body, request.headers["X-MisarMail-Signature"], secret)
    wh = standardwebhooks.Webhook(secret)
    assert wh.verify(request.body, dict(request.headers)) == envelope
    await wait_until(lambda: _delivered(conn, 1), what="delivery recorded")


async def test_rotated_secret_signs_with_both_during_grace_only_new_after(
    conn: asyncpg.Connection, receiver: Receiver, open_policy: None, start_engine: StartEngine
) -> None:
    """During a rotation's grace both secrets verify; after it only the new one does."""
    endpoint_id, old = await create_endpoint(conn, receiver.url("/hook"))
    new = await conn.fetchval("SELECT webhooks.rotate_secret($1, '1 hour')", endpoint_id)
    await start_engine()
    await conn.execute("SELECT webhooks.emit('acct_1', 'email.sent', '{}')")
    (first,) = await receiver.wait_for(1, "/hook")
    header = first.headers["X-MisarMail-Signature"]
    verify_signature(first.body, header, old)
    verify_signature(first.body, header, new)
    assert header.count("v1=") == 2
    assert len(first.headers["webhook-signature"].split()) == 2

    await conn.execute(
        "UPDATE webhooks.endpoints SET previous_secret_expires_at = now() - interval '1 s'"
    )
    await conn.execute("SELECT webhooks.emit('acct_1', 'email.sent', '{}')")
    second = (await receiver.wait_for(2, "/hook"))[1]
    header = second.headers["X-MisarMail-Signature"]
    assert header.count("v1=") == 1
    verify_signature(second.body, header, new)
    with pytest.raises(SignatureError, match="no matching signature"):
        verify_signature(second.body, header, old)


async def test_retries_until_success_and_records_every_attempt(
    conn: asyncpg.Connection, receiver: Receiver, open_policy: None, start_engine: StartEngine
) -> None:
    """Two 500s then a 200: three attempts recorded, the delivery ends as delivered."""
    receiver.script("/flaky", Reply(status=500), Reply(status=500), Reply(status=200))
    await create_endpoint(conn, receiver.url("/flaky"))
    await start_engine()
    await conn.execute("SELECT webhooks.emit('acct_1', 'email.clicked', '{}')")
    await receiver.wait_for(3, "/flaky", timeout_s=20)
    await wait_until(lambda: _delivered(conn, 1), what="delivered after retries")
    attempts = await conn.fetch(
        "SELECT attempt, status_code, outcome FROM webhooks.attempts ORDER BY attempt"
    )
    assert [(a["attempt"], a["status_code"], a["outcome"]) for a in attempts] == [
        (1, 500, "retry"),
        (2, 500, "retry"),
        (3, 200, "delivered"),
    ]
    requests = receiver.received_on("/flaky")
    assert len({r.headers["webhook-id"] for r in requests}) == 1, "webhook-id is stable"


async def test_gives_up_after_the_schedule_and_shows_in_failed_deliveries(
    conn: asyncpg.Connection, receiver: Receiver, open_policy: None, start_engine: StartEngine
) -> None:
    """An endpoint failing every time gets 1 + len(schedule) attempts, then a failed delivery."""
    receiver.script("/down", Reply(status=503))
    await create_endpoint(conn, receiver.url("/down"))
    await start_engine()
    await conn.execute("SELECT webhooks.emit('acct_1', 'email.sent', '{}')")
    await wait_until(
        lambda: _count(conn, "SELECT count(*) FROM webhooks.failed_deliveries", 1),
        what="failed delivery",
    )
    assert len(receiver.received_on("/down")) == 4
    row = await conn.fetchrow(
        "SELECT status, attempts, last_status_code FROM webhooks.delivery_log"
    )
    assert row is not None
    assert (row["status"], row["attempts"], row["last_status_code"]) == ("failed", 4, 503)


async def test_retry_after_is_honoured(
    conn: asyncpg.Connection, receiver: Receiver, open_policy: None, start_engine: StartEngine
) -> None:
    """A 429 with Retry-After: 2 schedules the retry exactly 2 s after the attempt is recorded
    (the 1 s schedule raised to the header, within 2x the delay), and the retry starts no
    sooner."""
    # The recording transaction's now(), taken beside each attempt row as it is written.
    await conn.execute(
        """CREATE TABLE public.recorded (attempt integer, wait interval);
           CREATE FUNCTION public.note_recorded() RETURNS trigger LANGUAGE plpgsql AS $$
           BEGIN
               INSERT INTO public.recorded VALUES (NEW.attempt, NEW.next_attempt_at - now());
               RETURN NULL;
           END $$;
           CREATE TRIGGER note_recorded AFTER INSERT ON webhooks.attempts
               FOR EACH ROW EXECUTE FUNCTION public.note_recorded();"""
    )
    receiver.script("/busy", Reply.retry_after("2"), Reply(status=200))
    await create_endpoint(conn, receiver.url("/busy"))
    await start_engine()
    await conn.execute("SELECT webhooks.emit('acct_1', 'email.sent', '{}')")
    first, second = await receiver.wait_for(2, "/busy", timeout_s=20)
    gap = second.arrived_at - first.arrived_at
    assert gap >= 1.9, f"retried after {gap:.2f} s, before the 2 s Retry-After (clamped to 2x1 s)"
    await wait_until(lambda: _delivered(conn, 1), what="the retry recorded")
    recorded = await conn.fetch("SELECT attempt, wait FROM public.recorded ORDER BY attempt")
    assert [(r["attempt"], r["wait"]) for r in recorded] == [(1, timedelta(seconds=2)), (2, None)]
    rows = await conn.fetch(
        "SELECT started_at, next_attempt_at FROM webhooks.attempts ORDER BY attempt"
    )
    assert rows[1]["started_at"] >= rows[0]["next_attempt_at"]


async def test_410_disables_the_endpoint(
    conn: asyncpg.Connection, receiver: Receiver, open_policy: None, start_engine: StartEngine
) -> None:
    """410 Gone ends the delivery as failed and disables the endpoint with a reason."""
    receiver.script("/gone", Reply(status=410))
    endpoint_id, _ = await create_endpoint(conn, receiver.url("/gone"))
    await start_engine()
    await conn.execute("SELECT webhooks.emit('acct_1', 'email.sent', '{}')")
    await wait_until(
        lambda: _count(conn, "SELECT count(*) FROM webhooks.endpoints WHERE NOT enabled", 1),
        what="endpoint disabled",
    )
    reason = await conn.fetchval(
        "SELECT disabled_reason FROM webhooks.endpoints WHERE id = $1", endpoint_id
    )
    assert "410" in reason
    assert await conn.fetchval("SELECT webhooks.emit('acct_1', 'email.sent', '{}')") is None
    assert len(receiver.received_on("/gone")) == 1


async def test_redirect_is_not_followed(
    conn: asyncpg.Connection, receiver: Receiver, open_policy: None, start_engine: StartEngine
) -> None:
    """A 302 is a failed attempt; the redirect target never receives anything."""
    receiver.script("/moved", Reply.redirect(receiver.url("/target")))
    await create_endpoint(conn, receiver.url("/moved"))
    await start_engine()
    await conn.execute("SELECT webhooks.emit('acct_1', 'email.sent', '{}')")
    await wait_until(
        lambda: _count(conn, "SELECT count(*) FROM webhooks.attempts WHERE status_code = 302", 1),
        what="redirect attempt recorded",
    )
    kind = await conn.fetchval("SELECT error_kind FROM webhooks.attempts LIMIT 1")
    assert kind == "redirect"
    assert receiver.received_on("/target") == []


async def test_hanging_endpoint_times_out(
    conn: asyncpg.Connection, receiver: Receiver, open_policy: None, start_engine: StartEngine
) -> None:
    """An endpoint that never answers gets a timeout attempt after the configured deadline."""
    receiver.script("/hang", Reply(delay_s=60))
    await create_endpoint(conn, receiver.url("/hang"))
    await start_engine(request_timeout_s=0.5)
    await conn.execute("SELECT webhooks.emit('acct_1', 'email.sent', '{}')")
    await wait_until(
        lambda: _count(conn, "SELECT count(*) FROM webhooks.attempts", 1), what="timeout attempt"
    )
    row = await conn.fetchrow("SELECT error_kind, duration_ms, status_code FROM webhooks.attempts")
    assert row is not None
    assert (row["error_kind"], row["status_code"]) == ("timeout", 0)
    assert row["duration_ms"] >= 450


async def test_huge_response_body_is_capped(
    conn: asyncpg.Connection, receiver: Receiver, open_policy: None, start_engine: StartEngine
) -> None:
    """A 20 MiB error body is stored as its first excerpt_bytes bytes exactly: the head of the
    body, then filler up to the cap."""
    receiver.script("/huge", Reply(status=500, body=b"h" * 100, extra_body_bytes=20 * MIB))
    await create_endpoint(conn, receiver.url("/huge"))
    await start_engine(excerpt_bytes=1024)
    await conn.execute("SELECT webhooks.emit('acct_1', 'email.sent', '{}')")
    await wait_until(
        lambda: _count(conn, "SELECT count(*) FROM webhooks.attempts", 1), what="attempt"
    )
    excerpt = await conn.fetchval("SELECT response_excerpt FROM webhooks.attempts")
    assert excerpt == "h" * 100 + "x" * (1024 - 100)


async def _delivered(conn: asyncpg.Connection, n: int) -> bool:
    return (await delivery_counts(conn)).get("delivered", 0) >= n


async def _count(conn: asyncpg.Connection, sql: str, n: int) -> bool:
    return int(await conn.fetchval(sql)) >= n
