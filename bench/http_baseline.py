"""The HTTP limit baseline: ``python -m bench.http_baseline --url URL --concurrency C``.

How many signed 1 KiB webhook POSTs per second one uvloop process with one aiohttp session can
push through the benchmark receiver on this machine, right now. The engine does the same HTTP work
plus claiming, signing bookkeeping and recording results, so the engine's deliveries/s divided by
this number says how much of the machine's HTTP capacity the engine turns into deliveries.

To make that ratio about the engine and nothing else, each request here looks like one of the
engine's: the same envelope size (:mod:`bench.payloads`), the same headers, a fresh signature per
request (``engine.signing.sign``, as the engine signs every attempt), a session configured like
the engine's sender, and the response body read. ``C`` workers share the request count; a short
untimed warm-up opens the connections first. Prints one JSON object on stdout, with the latency
percentiles of the timed requests (at concurrency 1: what one webhook costs at best, W2's floor).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import aiohttp
import uvloop

from bench.cpu import machine_cpu_seconds
from bench.payloads import EVENT_TYPE, envelope, new_secret
from engine.signing import sign

USER_AGENT = "MisarMail-Webhooks/0.1"  # the engine sender's default
REQUEST_TIMEOUT_S = 10.0  # the engine's default request timeout


@dataclass(frozen=True)
class BaselineResult:
    """One baseline run; ``requests_per_s`` counts every answered request, ``errors`` the non-200s
    and transport failures among them (a healthy run has none)."""

    concurrency: int
    requests: int
    seconds: float
    requests_per_s: float
    errors: int
    latency_p50_ms: float
    latency_p99_ms: float
    client_cpu_us: float  # this process's CPU per request
    machine_cpu_us: float  # every process's on this machine (client, receiver, kernel) per request


class _Load:
    """Shared by the workers: the next request number, the errors so far."""

    def __init__(self, url: str, total: int) -> None:
        self.url = url
        self.total = total
        self.next = 0
        self.errors = 0
        self.latencies: list[float] = []
        self.secrets = (new_secret(),)
        self.body = envelope(0)


async def _worker(session: aiohttp.ClientSession, load: _Load, first_id: int) -> None:
    while load.next < load.total:
        n = load.next
        load.next += 1
        headers = {
            **sign(
                load.secrets,
                load.body,
                webhook_id=f"evt_{first_id + n}",
                timestamp=int(time.time()),
            ),
            "Content-Type": "application/json",
            "User-Agent": USER_AGENT,
            "X-MisarMail-Event": EVENT_TYPE,
            "X-MisarMail-Delivery": str(first_id + n),
            "X-MisarMail-Attempt": "1",
        }
        started = time.perf_counter()
        try:
            async with session.post(
                load.url, data=load.body, headers=headers, allow_redirects=False
            ) as resp:
                await resp.read()
                if resp.status != 200:
                    load.errors += 1
        except (aiohttp.ClientError, TimeoutError):
            load.errors += 1
        load.latencies.append(time.perf_counter() - started)


async def _round(
    session: aiohttp.ClientSession, url: str, concurrency: int, total: int, first_id: int
) -> _Load:
    load = _Load(url, total)
    async with asyncio.TaskGroup() as tg:
        for _ in range(concurrency):
            tg.create_task(_worker(session, load, first_id))
    return load


def client_session(concurrency: int) -> aiohttp.ClientSession:
    """A session configured like the engine's sender, with ``concurrency`` connections at most
    (also bench.lean_relay's)."""
    return aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=concurrency, limit_per_host=0),
        timeout=aiohttp.ClientTimeout(total=REQUEST_TIMEOUT_S),
        cookie_jar=aiohttp.DummyCookieJar(),
        trust_env=False,
        skip_auto_headers=("Accept-Encoding",),
        auto_decompress=False,
    )


async def measure(url: str, *, concurrency: int, requests: int) -> BaselineResult:
    """POST ``requests`` envelopes to ``url`` with ``concurrency`` requests in flight."""
    async with client_session(concurrency) as session:
        await _round(session, url, concurrency, concurrency * 4, first_id=-concurrency * 4)
        started = time.perf_counter()
        cpu0 = time.process_time(), machine_cpu_seconds()
        load = await _round(session, url, concurrency, requests, first_id=0)
        seconds = time.perf_counter() - started
        client_cpu = time.process_time() - cpu0[0]
        machine_cpu = machine_cpu_seconds() - cpu0[1]
    return BaselineResult(
        concurrency=concurrency,
        requests=requests,
        seconds=round(seconds, 4),
        requests_per_s=round(requests / seconds, 1),
        errors=load.errors,
        latency_p50_ms=round(percentile(load.latencies, 50) * 1000, 3),
        latency_p99_ms=round(percentile(load.latencies, 99) * 1000, 3),
        client_cpu_us=round(client_cpu * 1e6 / requests, 1),
        machine_cpu_us=round(machine_cpu * 1e6 / requests, 1),
    )


def percentile(values: Sequence[float], p: float) -> float:
    """The ``p``-th percentile (nearest rank) of ``values``; 0.0 for none."""
    if not values:
        return 0.0
    ordered = sorted(values)
    rank = max(1, math.ceil(p / 100 * len(ordered)))
    return ordered[rank - 1]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.http_baseline", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--url", required=True, help="where to POST (a bench.receiver path)")
    parser.add_argument("--concurrency", type=int, default=16, help="requests in flight")
    parser.add_argument("--requests", type=int, default=10_000, help="timed requests")
    args = parser.parse_args(argv)
    if args.concurrency < 1 or args.requests < 1:
        parser.error("--concurrency and --requests must be positive")
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        result = runner.run(measure(args.url, concurrency=args.concurrency, requests=args.requests))
    print(json.dumps(asdict(result)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
