"""The database commands of the CLI: endpoints, deliveries, recover. ``main`` parses, these act.

Each command is a coroutine ``(store, args) -> exit code`` run inside :func:`session`, which
connects, refuses an outdated schema and closes the pool whatever happens. People get tables
(:mod:`engine.cli.render`); ``--json`` prints one JSON document (``tail``: one JSON object a line).
Secrets are printed only by ``endpoints add``, ``endpoints rotate-secret`` (the new secret, once)
and ``endpoints show --reveal-secret``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import signal
import sys
from collections.abc import Awaitable, Callable, Iterable, Sequence
from datetime import timedelta
from typing import Any

from engine.cli import render as tables
from engine.config import mask
from engine.db.migrate import check_current
from engine.db.pool import DatabaseUnavailable, open_engine_pool
from engine.db.read_models import (
    AttemptView,
    DeliveryStatus,
    DeliveryView,
    EndpointView,
    Page,
    RecentAttempt,
    jsonable,
)
from engine.db.store import Store
from engine.errors import EngineError, InvalidInput
from engine.models import EndpointOptions, Ordering

Command = Callable[[Store, argparse.Namespace], Awaitable[int]]
TAIL_BATCH = 500


async def session(url: str, command: Command, args: argparse.Namespace) -> int:
    """Run ``command`` on a small pool of its own; the schema must be the one this CLI ships."""
    try:
        pool = await open_engine_pool(url, 2)
    except DatabaseUnavailable as exc:
        raise EngineError(f"database: cannot connect to {mask(url)}: {exc}") from exc
    try:
        async with pool.acquire() as conn:
            await check_current(conn)
        return await command(Store(pool), args)
    finally:
        await pool.close()


# -- endpoints ----------------------------------------------------------------------------------


async def endpoints_add(store: Store, args: argparse.Namespace) -> int:
    new_id, _ = await store.create_endpoint(args.account, args.url, _endpoint_options(args))
    endpoint = await store.get_endpoint(new_id, reveal_secret=True)
    if args.json:
        return _print_json(endpoint)
    print(f"created endpoint {endpoint.id}")
    print(_endpoint_fields(endpoint))
    print(
        "\nThe secret is shown this once; give it to the receiver to verify signatures.\n"
        f"  misar-webhooks endpoints show {endpoint.id} --reveal-secret   shows it again"
    )
    return 0


async def endpoints_list(store: Store, args: argparse.Namespace) -> int:
    page = await store.list_endpoints(
        account_id=args.account, enabled=args.enabled, limit=args.limit, cursor=args.cursor
    )
    if args.json:
        return _print_json(page)
    rows = [
        [
            str(e.id),
            e.account_id,
            e.url,
            ",".join(e.event_types),
            "enabled" if e.enabled else "disabled",
            tables.when(e.created_at),
        ]
        for e in page.items
    ]
    headers = ["id", "account", "url", "events", "state", "created"]
    return _print_table(headers, rows, page, "no endpoints")


async def endpoints_show(store: Store, args: argparse.Namespace) -> int:
    endpoint = await store.get_endpoint(args.endpoint, reveal_secret=args.reveal_secret)
    if args.json:
        return _print_json(endpoint)
    print(_endpoint_fields(endpoint))
    return 0


async def endpoints_update(store: Store, args: argparse.Namespace) -> int:
    changes = _endpoint_options(args)
    reset = tuple(args.reset or ())
    if args.url is None and not changes.given() and not reset:
        raise InvalidInput(
            "nothing to update: pass at least one of --url, --events, --description, "
            "--max-in-flight, --ordering, --rate-limit, --header, --filter, --retry-schedule, "
            "--timeout, --reset"
        )
    await store.update_endpoint(args.endpoint, changes, url=args.url, reset=reset)
    return await _print_endpoint(store, args, "updated")


async def endpoints_disable(store: Store, args: argparse.Namespace) -> int:
    await store.disable_endpoint(args.endpoint, args.reason)
    return await _print_endpoint(store, args, "disabled")


async def endpoints_enable(store: Store, args: argparse.Namespace) -> int:
    await store.enable_endpoint(args.endpoint)
    return await _print_endpoint(store, args, "enabled")


async def endpoints_rotate(store: Store, args: argparse.Namespace) -> int:
    secret = await store.rotate_secret(args.endpoint, args.grace)
    endpoint = await store.get_endpoint(args.endpoint)
    expires = endpoint.previous_secret_expires_at
    if args.json:
        return _print_json(
            {"id": endpoint.id, "secret": secret, "previous_secret_expires_at": expires}
        )
    print(f"new secret of endpoint {endpoint.id}: {secret}")
    if expires:
        print(f"The old one stays valid until {tables.when(expires)}; deliveries carry both.")
    else:
        print("The old secret is no longer valid.")
    return 0


async def endpoints_delete(store: Store, args: argparse.Namespace) -> int:
    await store.delete_endpoint(args.endpoint)
    if args.json:
        return _print_json({"id": args.endpoint, "deleted": True})
    print(f"deleted endpoint {args.endpoint}; its live deliveries were cancelled")
    return 0


def _endpoint_options(args: argparse.Namespace) -> EndpointOptions:
    """The endpoint settings given on the command line."""
    return EndpointOptions(
        description=args.description,
        event_types=(
            tuple(t for group in args.events for t in group) if args.events is not None else None
        ),
        max_in_flight=args.max_in_flight,
        ordering=Ordering(args.ordering) if args.ordering is not None else None,
        rate_limit_per_s=args.rate_limit,
        headers=dict(args.header) if args.header is not None else None,
        filter=args.filter,
        retry_schedule=args.retry_schedule,
        timeout_s=args.timeout,
    )


async def _print_endpoint(store: Store, args: argparse.Namespace, done: str) -> int:
    endpoint = await store.get_endpoint(args.endpoint)
    if args.json:
        return _print_json(endpoint)
    print(f"{done} endpoint {endpoint.id}")
    print(_endpoint_fields(endpoint))
    return 0


def _schedule(schedule: Sequence[timedelta] | None) -> str:
    if schedule is None:
        return "the settings'"
    if not schedule:
        return "no retries"
    return ", ".join(f"{d.total_seconds():g}s" for d in schedule)


def _endpoint_fields(e: EndpointView) -> str:
    state = "enabled" if e.enabled else f"disabled since {tables.when(e.disabled_at)}"
    pairs = [
        ("id", str(e.id)),
        ("account", e.account_id),
        ("url", e.url),
        ("description", e.description or "-"),
        ("events", ", ".join(e.event_types)),
        ("state", state + (f": {e.disabled_reason}" if e.disabled_reason else "")),
        ("secret", e.secret),
    ]
    if e.previous_secret is not None:
        until = tables.when(e.previous_secret_expires_at)
        pairs.append(("previous secret", f"{e.previous_secret} (valid until {until})"))
    limit = f"{e.rate_limit_per_s:g}/s" if e.rate_limit_per_s else "none"
    pairs += [
        ("ordering", f"{e.ordering}, at most {e.max_in_flight} in flight, rate limit {limit}"),
        # Values come masked from the database unless revealed with the secret.
        ("headers", ", ".join(f"{k}: {v}" for k, v in e.headers.items()) or "none"),
        ("filter", e.filter or "none (every event)"),
        ("retry schedule", _schedule(e.retry_schedule)),
        ("timeout", f"{e.timeout_s} s" if e.timeout_s is not None else "the settings'"),
        ("last success", tables.when(e.last_success_at)),
        ("failing since", tables.when(e.failing_since)),
        ("created", tables.when(e.created_at)),
        ("updated", tables.when(e.updated_at)),
    ]
    return tables.fields(pairs)


# -- deliveries ---------------------------------------------------------------------------------


async def deliveries_list(store: Store, args: argparse.Namespace) -> int:
    page = await store.list_deliveries(
        status=DeliveryStatus(args.status) if args.status else None,
        endpoint_id=args.endpoint,
        event_type=args.event_type,
        since=args.since,
        account_id=args.account,
        limit=args.limit,
        cursor=args.cursor,
    )
    if args.json:
        return _print_json(page)
    headers = ["delivery", "created", "event", "status", "attempts", "last code", "endpoint"]
    rows = [_delivery_row(d) for d in page.items]
    return _print_table(headers, rows, page, "no deliveries")


def _delivery_row(d: DeliveryView) -> list[str]:
    return [
        str(d.delivery_id),
        tables.when(d.created_at),
        d.event_type + (" (test)" if d.test else ""),
        d.status.value,
        str(d.attempts),
        _status_text(d.last_status_code),
        d.endpoint_url,
    ]


async def deliveries_show(store: Store, args: argparse.Namespace) -> int:
    detail = await store.get_delivery(args.delivery)
    if args.json:
        return _print_json(detail)
    d = detail.delivery
    print(
        tables.fields(
            [
                ("delivery", str(d.delivery_id)),
                ("event", f"evt_{d.event_id} {d.event_type}" + (" (test)" if d.test else "")),
                ("endpoint", f"{d.endpoint_id} {d.endpoint_url}"),
                ("account", d.account_id),
                ("status", d.status.value),
                ("attempts", str(d.attempts)),
                ("created", tables.when(d.created_at)),
                ("next attempt", tables.when(d.next_attempt_at)),
                ("ended", tables.when(d.ended_at)),
                ("last error", d.last_error or "-"),
            ]
        )
    )
    if detail.attempts:
        headers = [
            "#",
            "started",
            "code",
            "latency",
            "outcome",
            "error",
            "response",
            "next attempt",
        ]
        print("\n" + tables.table(headers, [_attempt_row(a) for a in detail.attempts], width=48))
    else:
        print("\nno attempts yet")
    payload = "(past retention)" if detail.payload is None else json.dumps(detail.payload)
    print(f"\npayload {tables.cut(payload, 2000)}")
    return 0


def _attempt_row(a: AttemptView) -> list[str]:
    error = (
        a.error_kind + (f": {a.error_message}" if a.error_message else "") if a.error_kind else ""
    )
    return [
        str(a.attempt),
        tables.when(a.started_at),
        _status_text(a.status_code),
        f"{a.duration_ms} ms",
        a.outcome,
        error or "-",
        a.response_excerpt or "-",
        tables.when(a.next_attempt_at),
    ]


async def deliveries_redeliver(store: Store, args: argparse.Namespace) -> int:
    new_id = await store.redeliver(args.delivery)
    if args.json:
        return _print_json({"delivery_id": args.delivery, "new_delivery_id": new_id})
    print(f"queued delivery {new_id}: the event of delivery {args.delivery}, sent again")
    return 0


async def deliveries_tail(store: Store, args: argparse.Namespace) -> int:
    """Print attempts as they are recorded until Ctrl-C, SIGTERM, --count or --max-seconds."""
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    deadline = loop.time() + args.max_seconds if args.max_seconds is not None else None
    after, shown = await store.last_attempt_id(), 0
    print("following new attempts (Ctrl-C stops)", file=sys.stderr, flush=True)
    while not stop.is_set():
        # Only ids up to the highest one seen now are read, so a filter that matches nothing
        # does not make every poll re-read the same unmatched attempts.
        high = await store.last_attempt_id()
        batch = await store.attempts_after(
            after,
            up_to=high,
            endpoint_id=args.endpoint,
            event_type=args.event_type,
            account_id=args.account,
            limit=TAIL_BATCH,
        )
        for item in batch[: args.count - shown if args.count else None]:
            print(_tail_line(item, as_json=args.json), flush=True)
            shown += 1
        if args.count and shown >= args.count:
            break
        after = batch[-1].attempt.id if len(batch) == TAIL_BATCH else high
        wait = args.interval if len(batch) < TAIL_BATCH else 0
        if deadline is not None:
            if loop.time() >= deadline:
                break
            wait = min(wait, deadline - loop.time())
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), timeout=max(wait, 0))
    return 0


def _tail_line(item: RecentAttempt, *, as_json: bool) -> str:
    a = item.attempt
    if as_json:
        return json.dumps(
            jsonable(a)
            | {
                "event_type": item.event_type,
                "endpoint_url": item.endpoint_url,
                "account_id": item.account_id,
            }
        )
    error = f"{a.error_kind}: {a.error_message or ''}" if a.error_kind else ""
    parts = [
        tables.when(a.started_at),
        f"delivery {a.delivery_id} #{a.attempt}",
        item.event_type or "?",
        _status_text(a.status_code).rjust(3),
        f"{a.duration_ms} ms",
        a.outcome,
        tables.cut(item.endpoint_url, 48),
        tables.cut(error, 60),
    ]
    return "  ".join(p for p in parts if p)


async def recover(store: Store, args: argparse.Namespace) -> int:
    count = await store.recover(args.endpoint, args.since)
    if args.json:
        return _print_json({"endpoint_id": args.endpoint, "since": args.since, "requeued": count})
    noun = "delivery" if count == 1 else "deliveries"
    print(
        f"re-queued {count} {noun} of endpoint {args.endpoint} that failed or were cancelled "
        f"since {tables.when(args.since)}"
    )
    return 0


# -- output -------------------------------------------------------------------------------------


def _print_json(value: Any) -> int:
    print(json.dumps(jsonable(value), indent=2, ensure_ascii=False))
    return 0


def _print_table(headers: list[str], rows: Iterable[list[str]], page: Page[Any], empty: str) -> int:
    rows = list(rows)
    print(tables.table(headers, rows) if rows else empty)
    if page.next_cursor is not None:
        print(f"more: --cursor {page.next_cursor}", file=sys.stderr)
    return 0


def _status_text(status: int | None) -> str:
    """An HTTP status, or ``-`` when no response arrived (status 0) or none yet."""
    return str(status) if status else "-"
