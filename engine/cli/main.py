"""``misar-webhooks``: migrate | run | demo | endpoints | deliveries | recover | event-types |
portal-access | check-config.

Configuration comes from ``WEBHOOKS_*`` variables; flags override them. Tables are for people,
``--json`` for scripts. Whatever goes wrong ends with one line, ``misar-webhooks: error: ...``,
never a traceback: exit code 2 for bad input (flags, ids, field values), 1 when the operation
failed (unknown id, refused state change, database unreachable), 130 on Ctrl-C. uvloop appears
only here: ``asyncio.Runner(loop_factory=uvloop.new_event_loop)``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import sys
from collections.abc import Awaitable, Callable, Sequence
from datetime import timedelta
from pathlib import Path
from typing import Any, NoReturn, TypeVar

import asyncpg
import structlog
import uvloop

from engine import logs
from engine.cli import commands as cmd
from engine.cli import erasure
from engine.cli import portal_commands as portal
from engine.cli.args import (
    delivery_id,
    duration,
    durations,
    endpoint_id,
    header,
    page_size,
    portal_ttl,
    seconds,
    since,
    words,
)
from engine.cli.embedded_postgres import EmbeddedPostgres, PortInUse
from engine.config import LOG_FORMATS, LOG_LEVELS, Settings
from engine.db.keys import DEFAULT_PAGE
from engine.db.migrate import migrate
from engine.db.pool import connect
from engine.db.read_models import DeliveryStatus
from engine.errors import ConfigError, EmbeddedPostgresError, EngineError, InvalidInput
from engine.models import (
    DEFAULT_ROTATION_GRACE,
    ENDPOINT_DEFAULTS,
    MAX_IN_FLIGHT_BOUNDS,
    RESETTABLE,
    TIMEOUT_S_BOUNDS,
    Ordering,
)
from engine.portal_tokens import DEFAULT_TTL, MAX_TTL, MIN_TTL

T = TypeVar("T")
log = structlog.get_logger("engine.cli.main")
PROG = "misar-webhooks"
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130
DEFAULT_DATA_DIR = "~/.local/share/misar-webhooks/postgres"


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        settings = Settings.from_env(os.environ, **_overrides(args))
        logs.configure(settings.log_level, settings.log_format)
        handler: Callable[[argparse.Namespace, Settings], int] = args.handler
        return handler(args, settings)
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        # The reader went away (`| head`): stay quiet, and keep the interpreter's final flush of
        # stdout from raising again.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_FAILED
    except (InvalidInput, ConfigError) as exc:
        return _fail(str(exc), EXIT_USAGE)
    except EngineError as exc:  # the database being away included (DatabaseUnavailable)
        return _fail(str(exc), EXIT_FAILED)
    except UnicodeEncodeError as exc:  # e.g. an argument that is not valid UTF-8
        return _fail(f"cannot encode text: {exc}", EXIT_USAGE)
    # Not the database being away: a statement it refused (a role without a privilege), a URL
    # asyncpg cannot parse, a file that cannot be written. Still one line, never a traceback.
    except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
        return _fail(f"{type(exc).__name__}: {exc}", EXIT_FAILED)


def _fail(message: str, code: int) -> int:
    print(f"{PROG}: error: {' '.join(message.split())}", file=sys.stderr)
    return code


class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors: ``misar-webhooks: error: --since: '5x' is not a time``."""

    def error(self, message: str) -> NoReturn:
        message = message.removeprefix("argument ")
        self.exit(EXIT_USAGE, f"{PROG}: error: {message} (see: {self.prog} --help)\n")


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(prog=PROG, description=__doc__.splitlines()[0])
    parser.add_argument("--database-url", help="Postgres URL (default: $WEBHOOKS_DATABASE_URL)")
    parser.add_argument("--log-level", choices=LOG_LEVELS)
    parser.add_argument("--log-format", choices=LOG_FORMATS)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    p: argparse.ArgumentParser

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
    p.add_argument(
        "--embedded-port",
        dest="embedded_port",
        type=int,
        metavar="PORT",
        help="port of the embedded Postgres on 127.0.0.1, used without a database URL",
    )
    p.set_defaults(handler=_cmd_run)

    p = sub.add_parser("demo", help="run the whole product on an embedded Postgres, then exit")
    p.add_argument(
        "--keep",
        action="store_true",
        help="keep it running afterwards, with a link to the customer portal, until Ctrl+C",
    )
    p.set_defaults(handler=_cmd_demo)

    p = sub.add_parser("check-config", help="print the effective configuration, secrets masked")
    p.set_defaults(handler=_cmd_check_config)

    # Options every database command takes after its name as well.
    common = _Parser(add_help=False)
    common.add_argument("--json", action="store_true", help="print JSON for scripts")
    common.add_argument("--database-url", default=argparse.SUPPRESS, help=argparse.SUPPRESS)

    def command(
        group: argparse._SubParsersAction[_Parser], name: str, run: cmd.Command, text: str
    ) -> argparse.ArgumentParser:
        p: argparse.ArgumentParser = group.add_parser(
            name, parents=[common], help=text, description=text
        )
        p.set_defaults(handler=_with_store(run))
        return p

    def endpoint_options(p: argparse.ArgumentParser) -> None:
        p.add_argument(
            "--events",
            type=words,
            action="append",
            metavar="TYPES",
            help="event types, comma-separated: email.sent,email.*,* (repeatable; add: default *)",
        )
        p.add_argument("--description")
        low, high = MAX_IN_FLIGHT_BOUNDS
        p.add_argument(
            "--max-in-flight",
            type=int,
            metavar="N",
            help=f"{low}..{high} (add: default {ENDPOINT_DEFAULTS.max_in_flight})",
        )
        p.add_argument(
            "--ordering",
            choices=[o.value for o in Ordering],
            help=f"add: default {ENDPOINT_DEFAULTS.ordering}",
        )
        p.add_argument("--rate-limit", type=float, metavar="PER_S", help="0 removes the limit")
        p.add_argument(
            "--header",
            type=header,
            action="append",
            metavar="'NAME: VALUE'",
            help="a custom header sent with every attempt (repeatable; update: replaces them all)",
        )
        p.add_argument(
            "--filter",
            metavar="PATH",
            help="deliver only events whose payload matches, e.g. '$.bounce_type == \"hard\"'",
        )
        p.add_argument(
            "--retry-schedule",
            type=durations,
            metavar="DELAYS",
            help="this endpoint's retry delays, e.g. 1m,10m,1h (default: the settings')",
        )
        low, high = TIMEOUT_S_BOUNDS
        p.add_argument(
            "--timeout",
            type=int,
            metavar="S",
            help=f"request timeout, {low}..{high} s (default: the settings', usually 10)",
        )

    endpoints = sub.add_parser("endpoints", help="register and manage endpoints")
    esub = endpoints.add_subparsers(dest="action", required=True, metavar="ACTION")
    p = command(esub, "add", cmd.endpoints_add, "register an endpoint; prints its secret once")
    p.add_argument("url", metavar="URL")
    p.add_argument("--account", required=True, help="the MisarMail account it belongs to")
    endpoint_options(p)
    p = command(esub, "list", cmd.endpoints_list, "list endpoints, oldest first")
    p.add_argument("--account")
    state = p.add_mutually_exclusive_group()
    state.add_argument("--enabled", dest="enabled", action="store_const", const=True)
    state.add_argument("--disabled", dest="enabled", action="store_const", const=False)
    _paging(p)
    p = command(esub, "show", cmd.endpoints_show, "show an endpoint (secret masked)")
    p.add_argument("endpoint", type=endpoint_id, metavar="ENDPOINT")
    p.add_argument("--reveal-secret", action="store_true", help="print the secret in full")
    p = command(esub, "update", cmd.endpoints_update, "change an endpoint's settings")
    p.add_argument("endpoint", type=endpoint_id, metavar="ENDPOINT")
    p.add_argument("--url")
    endpoint_options(p)
    p.add_argument(
        "--reset",
        choices=RESETTABLE,
        action="append",
        help="put a policy back to its default: no headers or filter, the settings' schedule or"
        " timeout (repeatable)",
    )
    p = command(esub, "disable", cmd.endpoints_disable, "stop deliveries; cancels live ones")
    p.add_argument("endpoint", type=endpoint_id, metavar="ENDPOINT")
    p.add_argument("--reason", default="disabled by operator")
    p = command(esub, "enable", cmd.endpoints_enable, "resume; re-queues what disable cancelled")
    p.add_argument("endpoint", type=endpoint_id, metavar="ENDPOINT")
    p = command(esub, "rotate-secret", cmd.endpoints_rotate, "new secret; prints it once")
    p.add_argument("endpoint", type=endpoint_id, metavar="ENDPOINT")
    p.add_argument(
        "--grace",
        type=duration,
        default=DEFAULT_ROTATION_GRACE,
        help=(
            "how long the old secret stays valid"
            f" (default {DEFAULT_ROTATION_GRACE.total_seconds() / 3600:g}h; 0 ends it now)"
        ),
    )
    p = command(esub, "delete", cmd.endpoints_delete, "delete an endpoint; cancels live deliveries")
    p.add_argument("endpoint", type=endpoint_id, metavar="ENDPOINT")
    p = command(esub, "test", portal.endpoints_test, "send the catalogue's example as a test event")
    p.add_argument("endpoint", type=endpoint_id, metavar="ENDPOINT")
    p.add_argument("--event", required=True, metavar="TYPE", help="an event type (see event-types)")

    p = command(sub, "event-types", portal.event_types, "the event catalogue")
    p.add_argument("--examples", action="store_true", help="print each type's example data")

    p = sub.add_parser(
        "portal-access",
        help="print a portal URL for one account (signed with WEBHOOKS_PORTAL_KEY)",
        description="print a portal URL for one account (signed with WEBHOOKS_PORTAL_KEY)",
    )
    p.add_argument("account", metavar="ACCOUNT")
    p.add_argument(
        "--ttl",
        type=portal_ttl,
        default=DEFAULT_TTL,
        help=f"how long it is valid, {_hours(MIN_TTL)} to {_hours(MAX_TTL)} (default 1h)",
    )
    p.add_argument("--json", action="store_true", help="print JSON for scripts")
    p.set_defaults(handler=portal.portal_access)

    deliveries = sub.add_parser("deliveries", help="inspect and re-send deliveries")
    dsub = deliveries.add_subparsers(dest="action", required=True, metavar="ACTION")
    p = command(dsub, "list", cmd.deliveries_list, "the delivery log, newest first")
    p.add_argument("--status", choices=[s.value for s in DeliveryStatus])
    _delivery_filters(p)
    p.add_argument(
        "--since",
        type=since,
        metavar="TIME",
        help="created at or after: ISO 8601 (UTC unless an offset is given) or 15m, 2h, 1d",
    )
    _paging(p)
    p = command(dsub, "show", cmd.deliveries_show, "a delivery with every attempt")
    p.add_argument("delivery", type=delivery_id, metavar="DELIVERY")
    p = command(dsub, "redeliver", cmd.deliveries_redeliver, "send a delivery's event again")
    p.add_argument("delivery", type=delivery_id, metavar="DELIVERY")
    p = command(dsub, "tail", cmd.deliveries_tail, "follow attempts live until Ctrl-C")
    _delivery_filters(p)
    p.add_argument("--interval", type=seconds, default=0.5, metavar="S", help="poll every S s")
    p.add_argument("--count", type=page_size, metavar="N", help="stop after N attempts")
    p.add_argument("--max-seconds", type=seconds, metavar="S", help="stop after S seconds")

    p = command(sub, "recover", cmd.recover, "re-send what failed or was cancelled since TIME")
    p.add_argument("endpoint", type=endpoint_id, metavar="ENDPOINT")
    p.add_argument(
        "--since",
        type=since,
        required=True,
        metavar="TIME",
        help="ISO 8601 (UTC unless an offset is given) or 15m, 2h, 1d",
    )

    erasure.add_commands(sub, command)
    return parser


def _hours(value: timedelta) -> str:
    return f"{value.total_seconds() / 3600:g}h"


def _paging(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--limit", type=page_size, default=DEFAULT_PAGE, metavar="N", help="rows per page"
    )
    p.add_argument("--cursor", help="the next page, as printed after the previous one")


def _delivery_filters(p: argparse.ArgumentParser) -> None:
    p.add_argument("--endpoint", type=endpoint_id, metavar="ENDPOINT")
    p.add_argument("--event-type", metavar="TYPE")
    p.add_argument("--account")


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
        "embedded_port",
    )
    return {name: getattr(args, name, None) for name in names}


def _run_async(main: Callable[[], Awaitable[T]]) -> T:
    async def wrapper() -> T:
        return await main()

    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(wrapper())


def _require_url(settings: Settings) -> str:
    if not settings.database_url:
        raise ConfigError("no database: set WEBHOOKS_DATABASE_URL or pass --database-url")
    return settings.database_url


def _with_store(command: cmd.Command) -> Callable[[argparse.Namespace, Settings], int]:
    def handler(args: argparse.Namespace, settings: Settings) -> int:
        url = _require_url(settings)
        return _run_async(lambda: cmd.session(url, command, args))

    return handler


def _cmd_migrate(args: argparse.Namespace, settings: Settings) -> int:
    url = _require_url(settings)

    async def go() -> int:
        conn = await connect(url)
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


def _cmd_demo(args: argparse.Namespace, settings: Settings) -> int:
    # Imported here: the demo pulls in an HTTP server and the embedded Postgres package.
    from engine.cli import demo

    return demo.main(settings, keep=args.keep)


def _cmd_run(args: argparse.Namespace, settings: Settings) -> int:
    if settings.database_url:
        return _run_engine(settings, settings.database_url)
    data_dir = Path(settings.data_dir or DEFAULT_DATA_DIR).expanduser()
    server = EmbeddedPostgres(data_dir, port=settings.embedded_port)
    try:
        url = server.start()
    except PortInUse as exc:
        raise EmbeddedPostgresError(
            f"{exc}; choose another port with --embedded-port or WEBHOOKS_EMBEDDED_PORT"
        ) from exc
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
    # Imported here: the engine pulls in aiohttp, which would double every other command's start.
    from engine.app import Engine

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
