"""Small asyncio helpers the long-lived tasks share."""

from __future__ import annotations

import asyncio


async def wait_first(*events: asyncio.Event, seconds: float | None = None) -> bool:
    """Wait until any of ``events`` is set or ``seconds`` pass; True if an event fired.

    Waiter tasks are cancelled before returning, so nothing is left pending.
    """
    if any(e.is_set() for e in events):
        return True
    waiters = [asyncio.ensure_future(e.wait()) for e in events]
    try:
        done, _ = await asyncio.wait(waiters, timeout=seconds, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for waiter in waiters:
            waiter.cancel()
        await asyncio.gather(*waiters, return_exceptions=True)
    return bool(done)
