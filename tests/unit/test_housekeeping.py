"""periodic() and OutageLog on a real event loop, driven by Events and a scripted call."""

from __future__ import annotations

import asyncio
from collections.abc import MutableMapping
from typing import Any

import pytest
import structlog.testing

from engine.db.pool import DatabaseUnavailable, LostConflict
from engine.delivery.housekeeping import OutageLog, periodic

NEVER_S = 3600.0  # a period no test waits out: the next call comes from the wake Event
Step = BaseException | bool | None


class Script:
    """A call for periodic(): each call takes the next step (None or True: succeed, False: say
    there is nothing left to do, an exception: raise it) and sets ``ran``."""

    def __init__(self, *steps: Step, on_call: Any = None) -> None:
        self.steps = list(steps)
        self.calls = 0
        self.ran = asyncio.Event()
        self.on_call = on_call

    async def __call__(self) -> bool | None:
        self.calls += 1
        self.ran.set()
        if self.on_call is not None:
            self.on_call(self.calls)
        step = self.steps.pop(0) if self.steps else None
        if isinstance(step, BaseException):
            raise step
        return step

    async def next_call(self) -> None:
        """Wait until the script has been called since the last wait."""
        await self.ran.wait()
        self.ran.clear()


def outage_events(logged: list[MutableMapping[str, Any]]) -> list[tuple[str, str, Any]]:
    """(level, event, the failure's detail) of each line the outage log wrote."""
    return [
        (e["log_level"], e["event"], e.get("error") or e.get("after_failures"))
        for e in logged
        if e["event"].startswith("db_")
    ]


async def drive(script: Script, wake: asyncio.Event, calls: int) -> None:
    """Let periodic() make ``calls`` more calls, each started by setting ``wake``."""
    for _ in range(calls):
        wake.set()
        await script.next_call()


async def test_an_outage_is_logged_once_as_it_begins_and_once_as_it_ends() -> None:
    """Three failed calls in a row give one warning with the first error, and the next success
    one info line counting the three; calls before and after the outage log nothing."""
    first = DatabaseUnavailable("first")
    script = Script(None, first, DatabaseUnavailable("second"), LostConflict("third"), None, None)
    stop, wake = asyncio.Event(), asyncio.Event()
    outage = OutageLog("db_failed", "db_recovered")
    with structlog.testing.capture_logs() as logged:
        task = asyncio.ensure_future(
            periodic(script, every_s=NEVER_S, stop=stop, outage=outage, wake=wake)
        )
        await script.next_call()
        await drive(script, wake, 2)
        assert outage.failures == 2, "the outage is under way, counted, and said once"
        assert outage_events(logged) == [("warning", "db_failed", repr(first))]
        await drive(script, wake, 3)
        stop.set()
        await task
    assert script.calls == 6
    assert outage_events(logged) == [
        ("warning", "db_failed", repr(first)),
        ("info", "db_recovered", 3),
    ]
    assert outage.failures == 0


def test_a_second_outage_is_logged_again_and_a_success_alone_logs_nothing() -> None:
    """After a recovery the next failure starts a new outage with its own warning; successes
    with no outage before them write nothing."""
    outage = OutageLog("db_failed", "db_recovered")
    one, two = DatabaseUnavailable("one"), DatabaseUnavailable("two")
    with structlog.testing.capture_logs() as logged:
        outage.succeeded()
        outage.failed(one, buffered=7)
        outage.succeeded()
        outage.succeeded()
        outage.failed(two, buffered=8)
        outage.failed(two, buffered=9)
    assert [(e["log_level"], e["event"]) for e in logged] == [
        ("warning", "db_failed"),
        ("info", "db_recovered"),
        ("warning", "db_failed"),
    ]
    assert logged[0]["buffered"] == 7, "the context of the first failure is logged"
    assert logged[1]["after_failures"] == 1
    assert outage.failures == 2


async def test_the_next_call_comes_when_the_period_ends() -> None:
    """With a period of 0 the calls follow each other without any wake-up, until the stop."""
    stop = asyncio.Event()

    def stop_at_third(calls: int) -> None:
        if calls == 3:
            stop.set()

    script = Script(on_call=stop_at_third)
    await periodic(script, every_s=0.0, stop=stop, outage=OutageLog("db_failed", "db_recovered"))
    assert script.calls == 3


async def test_a_wake_up_during_a_call_is_not_lost() -> None:
    """``wake`` is cleared before each call, so one set while a call runs brings the next call,
    even with a period no one waits out."""
    stop, wake = asyncio.Event(), asyncio.Event()

    def wake_during_first(calls: int) -> None:
        if calls == 1:
            wake.set()
        else:
            stop.set()

    script = Script(on_call=wake_during_first)
    outage = OutageLog("db_failed", "db_recovered")
    await periodic(script, every_s=NEVER_S, stop=stop, outage=outage, wake=wake)
    assert script.calls == 2


async def test_a_stop_during_the_wait_ends_the_loop_and_a_stop_before_makes_no_call() -> None:
    """The stop Event ends the wait at once; set before the start, no call is made at all."""
    stop, wake = asyncio.Event(), asyncio.Event()
    script = Script()
    outage = OutageLog("db_failed", "db_recovered")
    task = asyncio.ensure_future(
        periodic(script, every_s=NEVER_S, stop=stop, outage=outage, wake=wake)
    )
    await script.next_call()
    stop.set()
    await task
    assert script.calls == 1

    await periodic(script, every_s=0.0, stop=stop, outage=outage)
    assert script.calls == 1


async def test_a_call_with_nothing_left_to_do_ends_the_loop() -> None:
    """A call returning False ends periodic() without a stop; True and None go on."""
    stop = asyncio.Event()
    script = Script(None, True, False, None)
    await periodic(script, every_s=0.0, stop=stop, outage=OutageLog("db_failed", "db_recovered"))
    assert script.calls == 3
    assert not stop.is_set()


async def test_an_error_other_than_database_unavailable_propagates() -> None:
    """A bug is not waited out: it ends the loop, unlogged, for the engine's TaskGroup to see."""
    stop = asyncio.Event()
    script = Script(None, ValueError("a bug"))
    outage = OutageLog("db_failed", "db_recovered")
    with structlog.testing.capture_logs() as logged, pytest.raises(ValueError, match="a bug"):
        await periodic(script, every_s=0.0, stop=stop, outage=outage)
    assert script.calls == 2
    assert outage_events(logged) == []
