"""Helpers for tests that run the whole engine: a running-engine handle, polling, SQL set-up."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import asyncpg

from engine.app import Engine
from engine.config import Settings


@dataclass
class RunningEngine:
    """An Engine task plus the event that stops it."""

    engine: Engine
    task: asyncio.Task[None]
    stop_event: asyncio.Event = field(default_factory=asyncio.Event)

    async def stop(self) -> None:
        """Ask for a graceful stop and wait for run() to return (re-raising what it raised)."""
        self.stop_event.set()
        await asyncio.wait_for(asyncio.shield(self.task), timeout=30)


async def launch_engine(settings: Settings, database_url: str) -> RunningEngine:
    """Run an Engine as a task on this loop; return once it has started (or raise why not)."""
    engine = Engine(settings, database_url)
    stop_event = asyncio.Event()
    task = asyncio.get_running_loop().create_task(engine.run(stop_event))
    started = asyncio.ensure_future(engine.started.wait())
    await asyncio.wait([started, task], return_when=asyncio.FIRST_COMPLETED, timeout=30)
    started.cancel()
    if task.done():
        task.result()
    if not engine.started.is_set():
        stop_event.set()
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        raise AssertionError("engine did not start within 30 s")
    return RunningEngine(engine, task, stop_event)


async def wait_until(
    predicate: Callable[[], Awaitable[bool]], *, timeout_s: float = 20.0, what: str = "condition"
) -> None:
    """Poll ``predicate`` until it is true; fail the test after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while not await predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")
        await asyncio.sleep(0.05)


async def create_endpoint(
    conn: asyncpg.Connection,
    url: str,
    *,
    account: str = "acct_1",
    types: tuple[str, ...] = ("*",),
    **opts: Any,
) -> tuple[Any, str]:
    """Register an endpoint through the SQL API; returns (id, secret)."""
    names = ", ".join(f"p_{k} => ${i + 4}" for i, k in enumerate(opts))
    extra = f", {names}" if names else ""
    row = await conn.fetchrow(
        f"SELECT id, secret FROM webhooks.create_endpoint($1, $2, $3::text[]{extra})",
        account,
        url,
        list(types),
        *opts.values(),
    )
    assert row is not None
    return row["id"], row["secret"]


async def delivery_counts(conn: asyncpg.Connection) -> dict[str, int]:
    """Deliveries by status, from the operator's view."""
    rows = await conn.fetch("SELECT status, count(*) AS n FROM webhooks.delivery_log GROUP BY 1")
    return {r["status"]: r["n"] for r in rows}
