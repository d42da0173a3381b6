"""``misar-webhooks``: migrate | run | check-config.

Configuration comes from ``WEBHOOKS_*`` variables; flags override them. Bad input ends with a
one-line message naming what was wrong and exit code 2, never a traceback. uvloop appears only
here: ``asyncio.Runner(loop_factory=uvloop.new_event_loop)``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import sys
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

import asyncpg
import structlog
import uvloop

from engine import logs
from engine.app import Engine
from engine.config import Settings
from engine.embedded import EmbeddedPostgres
from engine.errors import EngineError
from engine.migrate import migrate

T = TypeVar("T")
log = structlog.get_logger("engine.cli")
EXIT_USAGE = 2
DEFAULT_DATA_DIR = "~/.local/share/misar-webhooks/postgres"


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    try:
        settings = Settings.from_env(os.environ, **_overrides(args))
        logs.configure(settings.log_level, settings.log_format)
        handler: Callable[[argparse.Namespace, Settings], int] = args.handler
        return handler(args, settings)
    except EngineError as exc:
        print(f"misar-webhooks: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except (OSError, asyncpg.PostgresError) as exc:
        print(f"misar-webhooks: error: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="misar-webhooks", description=__doc__.splitlines()[0])
    parser.add_argument("--database-url", help="Postgres URL (default: $WEBHOOKS_DATABASE_URL)")
    parser.add_argument("--log-level", choices=["debug", "info", "warning", "error"])
    parser.add_argument("--log-format", choices=["auto", "json", "console"])
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("migrate", help="apply pending migrations and exit")
    p.set_defaults(handler=_cmd_migrate)

    p = sub.add_parser("run", help="run the delivery engine until SIGTERM")
    p.add_argument(
        "--no-migrate",
        dest="migrate",
        action="store_const",
        const=False,
        help="refuse to start on an outdated schema instead of migrating it",
    )
    p.add_argument("--request-timeout", dest="request_timeout_s", type=float, metavar="S")
    p.add_argument("--poll-interval", dest="poll_interval_s", type=float, metavar="S")
    p.add_argument("--shutdown-grace", dest="shutdown_grace_s", type=float, metavar="S")
    p.add_argument(
        "--data-dir", help="embedded Postgres data directory, used without a database URL"
    )
    p.set_defaults(handler=_cmd_run)

    p = sub.add_parser("check-config", help="print the effective configuration, secrets masked")
    p.set_defaults(handler=_cmd_check_config)
    return parser


def _overrides(args: argparse.Namespace) -> dict[str, Any]:
    names = (
        "database_url",
        "log_level",
        "log_format",
        "migrate",
        "request_timeout_s",
        "poll_interval_s",
        "shutdown_grace_s",
        "data_dir",
    )
    return {name: getattr(args, name, None) for name in names}


def _run_async(main: Callable[[], Awaitable[T]]) -> T:
    async def wrapper() -> T:
        return await main()

    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(wrapper())


def _require_url(settings: Settings) -> str:
    if not settings.database_url:
        raise EngineError("no database: set WEBHOOKS_DATABASE_URL or pass --database-url")
    return settings.database_url


def _cmd_migrate(args: argparse.Namespace, settings: Settings) -> int:
    url = _require_url(settings)

    async def go() -> int:
        conn = await asyncpg.connect(url, timeout=30)
        try:
            report = await migrate(conn)
        finally:
            await conn.close()
        if report.changed:
            print(f"applied migrations: {report.applied or 'none'}; functions: {report.functions}")
        else:
            print("nothing to migrate: the schema is current")
        return 0

    return _run_async(go)


def _cmd_check_config(args: argparse.Namespace, settings: Settings) -> int:
    print(json.dumps(settings.masked(), indent=2))
    return 0


def _cmd_run(args: argparse.Namespace, settings: Settings) -> int:
    if settings.database_url:
        return _run_engine(settings, settings.database_url)
    data_dir = Path(settings.data_dir or DEFAULT_DATA_DIR).expanduser()
    server = EmbeddedPostgres(data_dir, port=5433 if not settings.data_dir else None)
    url = server.start()
    print(
        f"embedded Postgres in {data_dir} at {url}\n"
        f"  the app connects with: psql {url} (and calls webhooks.emit(...))",
        file=sys.stderr,
    )
    try:
        return _run_engine(settings, url)
    finally:
        server.stop()


def _run_engine(settings: Settings, url: str) -> int:
    engine = Engine(settings, url)

    async def go() -> int:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        signals_seen = 0

        def on_signal(signum: int) -> None:
            nonlocal signals_seen
            signals_seen += 1
            if signals_seen > 1:
                # A second signal means "now": skip the graceful drain.
                os._exit(128 + signum)
            log.info("shutdown_requested", signal=signal.Signals(signum).name)
            stop.set()

        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, on_signal, signum)
        await engine.run(stop)
        return 0

    return _run_async(go)
