"""structlog set-up: JSON lines off a TTY (what log collectors parse), console on a TTY.

Log events are snake_case past tense with stable keys (endpoint_id, delivery_id, attempt, outcome,
duration_ms). Secrets are never passed to a logger: the engine logs ids, not endpoint rows.

Libraries log through the standard library (asyncpg's pool, aiohttp, asyncio's "Task exception
was never retrieved"). Left alone, Python prints those as bare text on stderr, which a JSON log
pipeline cannot parse and an operator filtering on ``level`` never sees. They go through the same
renderer instead, with the library's logger name.
"""

from __future__ import annotations

import logging
import sys

import structlog

# Libraries' INFO and DEBUG lines are theirs to tune, not the engine's: their warnings and errors
# are what an operator needs, whatever the engine's own level.
LIBRARY_MIN_LEVEL = logging.WARNING


def configure(level: str = "info", fmt: str = "auto") -> None:
    """Configure structlog and the standard library's root logger process-wide (called once by
    the CLI)."""
    use_console = fmt == "console" or (fmt == "auto" and sys.stderr.isatty())
    renderer: structlog.typing.Processor = (
        structlog.dev.ConsoleRenderer() if use_console else structlog.processors.JSONRenderer()
    )
    level_no = logging.getLevelNamesMapping()[level.upper()]
    stamp = structlog.processors.TimeStamper(fmt="iso", utc=True)
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            stamp,
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(level_no),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=True,
    )
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=[
                structlog.stdlib.add_log_level,
                structlog.stdlib.add_logger_name,
                stamp,
            ],
            processors=[
                structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                structlog.processors.format_exc_info,
                renderer,
            ],
        )
    )
    root = logging.getLogger()
    root.handlers = [handler]
    root.setLevel(max(level_no, LIBRARY_MIN_LEVEL))
