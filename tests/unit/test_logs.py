"""Log lines: every line the engine writes off a TTY is one JSON object, libraries' included."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from typing import Any

import pytest
import structlog

from engine import logs


@pytest.fixture(autouse=True)
def _restore_logging() -> Iterator[None]:
    """configure() is process-wide: put the root logger and structlog back after each test."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    root.handlers, root.level = handlers, level
    structlog.reset_defaults()


def _lines(err: str) -> list[dict[str, Any]]:
    parsed = [json.loads(line) for line in err.splitlines() if line]
    assert all(isinstance(p, dict) for p in parsed), err
    return parsed


def test_a_library_warning_is_a_json_line_with_its_logger(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """asyncpg's pool warns through the standard library: the line is JSON, named and levelled
    like the engine's own."""
    logs.configure("info", "json")
    logging.getLogger("asyncpg.pool").warning("resetting connection %s failed", 7)
    structlog.get_logger().info("engine_started", engine_id="e1")

    library, own = _lines(capsys.readouterr().err)
    assert library["event"] == "resetting connection 7 failed"
    assert library["level"] == "warning"
    assert library["logger"] == "asyncpg.pool"
    assert library["timestamp"].endswith("Z")
    assert own["event"] == "engine_started"
    assert own["engine_id"] == "e1"


def test_a_library_exception_keeps_its_traceback_inside_the_json_line(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """asyncio logs a task's unretrieved exception with exc_info: the traceback is a field of
    the one line, not lines of its own."""
    logs.configure("info", "json")
    error = RuntimeError("boom")
    logging.getLogger("asyncio").error(
        "Task exception was never retrieved", exc_info=(RuntimeError, error, None)
    )

    (line,) = _lines(capsys.readouterr().err)
    assert line["level"] == "error"
    assert "RuntimeError: boom" in line["exception"]


def test_library_info_lines_stay_out_and_the_engine_level_still_applies(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Libraries' INFO lines are their own chatter; a level above WARNING hides their warnings
    too, as it hides the engine's."""
    logs.configure("info", "json")
    logging.getLogger("aiohttp.client").info("connection pool state")
    logging.getLogger("aiohttp.client").warning("kept")
    assert [line["event"] for line in _lines(capsys.readouterr().err)] == ["kept"]

    logs.configure("error", "json")
    logging.getLogger("aiohttp.client").warning("hidden")
    structlog.get_logger().warning("also_hidden")
    logging.getLogger("aiohttp.client").error("shown")
    assert [line["event"] for line in _lines(capsys.readouterr().err)] == ["shown"]
