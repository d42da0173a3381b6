"""The benchmark's webhook receiver, run in its own process: ``python -m bench.receiver``.

It must cost as little as possible, because both the HTTP baseline and the engine are measured
against it: aiohttp's low-level server (no router, no access log) on uvloop, answering every POST
``200 ok`` after reading the body. A separate process keeps its CPU time out of the engine's and
the load generator's event loops; its clock is comparable because all processes run on one
machine and record ``time.time()``.

Protocol: it listens on 127.0.0.1 on a free port and prints that port as the first (and only)
line of stdout, and also writes it to ``--port-file`` if given. ``GET /stats`` returns
:meth:`Stats.snapshot` as JSON; ``POST /reset`` clears it. Every other POST, on any path, counts
as a delivery. SIGTERM or SIGINT stops it.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import uvloop
from aiohttp import web

STATS_PATH = "/stats"
RESET_PATH = "/reset"


class Stats:
    """What arrived since the last reset: counts per path, first and last arrival, duplicates.

    A duplicate is a second request with the same ``webhook-id`` on the same path: the engine
    sending one event twice to one endpoint (at-least-once delivery makes that possible, but a
    healthy run should show none). Requests without a ``webhook-id`` are counted, never duplicates.
    """

    def __init__(self) -> None:
        self.per_path: dict[str, int] = {}
        self.count = 0
        self.duplicates = 0
        self.first: float | None = None
        self.last: float | None = None
        self._seen: set[tuple[str, str]] = set()

    def record(self, path: str, webhook_id: str | None) -> None:
        now = time.time()
        if self.first is None:
            self.first = now
        self.last = now
        self.count += 1
        self.per_path[path] = self.per_path.get(path, 0) + 1
        if webhook_id is not None:
            key = (webhook_id, path)
            if key in self._seen:
                self.duplicates += 1
            else:
                self._seen.add(key)

    def snapshot(self) -> dict[str, Any]:
        """The JSON ``GET /stats`` returns; ``unique`` is ``count - duplicates``."""
        return {
            "count": self.count,
            "unique": self.count - self.duplicates,
            "duplicates": self.duplicates,
            "first": self.first,
            "last": self.last,
            "per_path": self.per_path,
        }


class ReceiverServer:
    """The HTTP side: one handler for every request, dispatched on method and path."""

    def __init__(self) -> None:
        self.stats = Stats()

    async def handle(self, request: web.BaseRequest) -> web.StreamResponse:
        if request.method == "POST":
            if request.path == RESET_PATH:
                self.stats = Stats()
                return web.Response(text="reset")
            await request.read()
            self.stats.record(request.path, request.headers.get("webhook-id"))
            return web.Response(text="ok")
        if request.method == "GET" and request.path == STATS_PATH:
            return web.json_response(self.stats.snapshot())
        return web.Response(status=405, text="POST any path, GET /stats, POST /reset")


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
