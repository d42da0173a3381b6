"""The benchmark's webhook receiver, run in its own process: ``python -m bench.receiver``.

It must cost as little as possible, because both the HTTP baseline and the engine are measured
against it: aiohttp's low-level server (no router, no access log) on uvloop, answering every POST
``200 ok`` after reading the body, unless told to misbehave (slow paths, random 500s). A separate
process keeps its CPU time out of the engine's and the load generator's event loops; its clock is
comparable because all processes run on one machine and record ``time.time()``.

Protocol: it listens on 127.0.0.1 on a free port and prints that port as the first (and only)
line of stdout, and also writes it to ``--port-file`` if given. ``GET /stats`` returns
:meth:`Stats.snapshot` as JSON, ``GET /arrivals`` when each delivery first arrived, ``POST /reset``
clears both; ``POST /configure`` with ``{"delay_s": {path: seconds}, "fail_ratio": r}`` makes the
given paths sleep before answering and answers ``500`` to a random share ``r`` of deliveries (until
the next ``/configure``). Every other POST, on any path, is a delivery attempt; only those answered
``200`` count as deliveries. SIGTERM or SIGINT stops it.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import signal
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import uvloop
from aiohttp import web

STATS_PATH = "/stats"
ARRIVALS_PATH = "/arrivals"
RESET_PATH = "/reset"
CONFIGURE_PATH = "/configure"


class Stats:
    """What arrived since the last reset: deliveries (2xx answers) per path, first and last
    arrival, duplicates, and the failures the receiver answered on purpose.

    A duplicate is a second delivery with the same ``webhook-id`` on the same path: the engine
    sending one event twice to one endpoint (at-least-once delivery makes that possible, but a
    healthy run should show none). Requests without a ``webhook-id`` are counted, never duplicates.
    """

    def __init__(self) -> None:
        self.per_path: dict[str, int] = {}
        self.last_per_path: dict[str, float] = {}
        self.count = 0
        self.duplicates = 0
        self.failed = 0
        self.first: float | None = None
        self.last: float | None = None
        self.arrivals: dict[str, float] = {}  # "<webhook-id> <path>" -> first 2xx arrival

    def record(self, path: str, webhook_id: str | None, now: float) -> None:
        if self.first is None:
            self.first = now
        self.last = now
        self.last_per_path[path] = now
        self.count += 1
        self.per_path[path] = self.per_path.get(path, 0) + 1
        if webhook_id is not None:
            key = f"{webhook_id} {path}"
            if key in self.arrivals:
                self.duplicates += 1
            else:
                self.arrivals[key] = now

    def snapshot(self) -> dict[str, Any]:
        """The JSON ``GET /stats`` returns; ``unique`` is ``count - duplicates``."""
        return {
            "count": self.count,
            "unique": self.count - self.duplicates,
            "duplicates": self.duplicates,
            "failed": self.failed,
            "first": self.first,
            "last": self.last,
            "per_path": self.per_path,
            "last_per_path": self.last_per_path,
        }


class ReceiverServer:
    """The HTTP side: one handler for every request, dispatched on method and path."""

    def __init__(self) -> None:
        self.stats = Stats()
        self.delay_s: dict[str, float] = {}
        self.fail_ratio = 0.0

    async def handle(self, request: web.BaseRequest) -> web.StreamResponse:
        if request.method == "POST":
            if request.path == RESET_PATH:
                self.stats = Stats()
                return web.Response(text="reset")
            if request.path == CONFIGURE_PATH:
                config = await request.json()
                self.delay_s = {str(k): float(v) for k, v in config.get("delay_s", {}).items()}
                self.fail_ratio = float(config.get("fail_ratio", 0.0))
                return web.Response(text="configured")
            return await self._deliver(request)
        if request.method == "GET" and request.path == STATS_PATH:
            return web.json_response(self.stats.snapshot())
        if request.method == "GET" and request.path == ARRIVALS_PATH:
            return web.json_response(self.stats.arrivals)
        return web.Response(status=405, text="POST any path, GET /stats, POST /reset")

    async def _deliver(self, request: web.BaseRequest) -> web.StreamResponse:
        await request.read()
        delay = self.delay_s.get(request.path)
        if delay:
            await asyncio.sleep(delay)
        if self.fail_ratio and random.random() < self.fail_ratio:
            self.stats.failed += 1
            return web.Response(status=500, text="scripted failure")
        self.stats.record(request.path, request.headers.get("webhook-id"), time.time())
        return web.Response(text="ok")


async def serve(port_file: Path | None) -> None:
    """Listen until SIGTERM or SIGINT; announce the port on stdout (and in ``port_file``)."""
    server = ReceiverServer()
    runner = web.ServerRunner(web.Server(server.handle, access_log=None))
    await runner.setup()
    try:
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = int(runner.addresses[0][1])
        if port_file is not None:
            # Write then rename, so a reader polling for the file never sees it half written.
            tmp = port_file.with_name(port_file.name + ".tmp")
            tmp.write_text(f"{port}\n")
            os.replace(tmp, port_file)
        print(port, flush=True)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, stop.set)
        await stop.wait()
    finally:
        await runner.cleanup()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.receiver", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--port-file", type=Path, help="also write the port to this file")
    args = parser.parse_args(argv)
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(serve(args.port_file))
    return 0


if __name__ == "__main__":
    sys.exit(main())
