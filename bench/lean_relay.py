"""The lean outbox's relay: ``python -m bench.lean_relay --url URL``, until SIGTERM.

W6 compares the app's commit rate with the engine busy ("c") against the lean outbox's. The lean
outbox alone has nothing reading its rows, while c shares the machine's two cores with an engine
and its receiver doing HTTP work. This relay gives the lean outbox the least a hand-written outbox
needs to deliver its rows: one process on uvloop that takes the oldest rows of
``app.lean_deliveries`` (deleting them, with their endpoint's URL and the event's payload, in one
statement) and POSTs each, signed as the engine signs, to its endpoint, some at a time. It has no
retries, no attempt log, no ordering, no leases and no wake-ups; it polls every 10 ms, as W6's
engines do when idle. "c / lean outbox, relay busy" then compares the two designs under the same
kind of load. It is not a product: a row it took is gone whatever the answer.

Prints ``{"sent": N, "errors": E}`` on stdout when it stops.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import sys
import time
from collections.abc import Sequence

import aiohttp
import asyncpg
import uvloop

from bench.http_baseline import USER_AGENT, client_session
from bench.payloads import new_secret
from engine.signing import sign

BATCH = 200
CONCURRENCY = 64
POLL_S = 0.01
TAKE = """
WITH taken AS (
    DELETE FROM app.lean_deliveries d
     WHERE d.id IN (SELECT l.id FROM app.lean_deliveries l ORDER BY l.id LIMIT $1
                      FOR UPDATE SKIP LOCKED)
    RETURNING d.id, d.event_id, d.event_type, d.endpoint_id)
SELECT t.id, t.event_id, t.event_type, e.url, ev.payload::text AS payload
  FROM taken t
  JOIN webhooks.endpoints e ON e.id = t.endpoint_id
  JOIN app.lean_events ev ON ev.id = t.event_id"""


class Relay:
    def __init__(self, conn: asyncpg.Connection, session: aiohttp.ClientSession) -> None:
        self.conn = conn
        self.session = session
        self.secrets = (new_secret(),)
        self.sent = 0
        self.errors = 0
        self.stopping = asyncio.Event()

    async def run(self) -> None:
        take = await self.conn.prepare(TAKE)
        while not self.stopping.is_set():
            rows = await take.fetch(BATCH)
            if not rows:
                await asyncio.sleep(POLL_S)
                continue
            gate = asyncio.Semaphore(CONCURRENCY)
            async with asyncio.TaskGroup() as tg:
                for row in rows:
                    tg.create_task(self._post(gate, row))

    async def _post(self, gate: asyncio.Semaphore, row: asyncpg.Record) -> None:
        body = row["payload"].encode()
        headers = {
            **sign(self.secrets, body, webhook_id=f"evt_{row['event_id']}",
                   timestamp=int(time.time())),
            "Content-Type": "application/json",
            "User-Agent": USER_AGENT,
            "X-MisarMail-Event": row["event_type"],
            "X-MisarMail-Delivery": str(row["id"]),
            "X-MisarMail-Attempt": "1",
        }  # fmt: skip
        async with gate:
            try:
                async with self.session.post(
                    row["url"], data=body, headers=headers, allow_redirects=False
                ) as resp:
                    await resp.read()
                    ok = 200 <= resp.status < 300
            except (aiohttp.ClientError, TimeoutError):
                ok = False
        if ok:
            self.sent += 1
        else:
            self.errors += 1


async def relay(url: str) -> dict[str, int]:
    conn = await asyncpg.connect(url)
    try:
        async with client_session(CONCURRENCY) as session:
            worker = Relay(conn, session)
            asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, worker.stopping.set)
            await worker.run()
    finally:
        await conn.close()
    return {"sent": worker.sent, "errors": worker.errors}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.lean_relay", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--url", required=True, help="the benchmark database")
    args = parser.parse_args(argv)
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        result = runner.run(relay(args.url))
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
