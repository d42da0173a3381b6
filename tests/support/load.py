"""A load of events over many endpoints, and the checks that nothing was lost or made up.

:func:`make_load` registers one endpoint per account on a :class:`Receiver` path and emits events
for each. :func:`check_delivered_once` then compares three records of the same history, which
must agree: the receiver's requests, the attempts table and the delivery outcomes.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass

import asyncpg

from tests.support.engines import create_endpoint
from tests.support.receiver import Receiver, Reply


@dataclass(frozen=True)
class Load:
    """Event ids per receiver path; each event has exactly one delivery (one endpoint each)."""

    events: dict[str, list[int]]

    @property
    def total(self) -> int:
        return sum(len(ids) for ids in self.events.values())

    @property
    def paths(self) -> list[str]:
        return list(self.events)

    def expected(self) -> set[tuple[str, str]]:
        """Every (path, webhook-id) pair the receiver must see at least once."""
        return {(path, f"evt_{i}") for path, ids in self.events.items() for i in ids}


async def make_load(
    conn: asyncpg.Connection,
    receiver: Receiver,
    *,
    endpoints: int,
    events_per_endpoint: int,
    reply: Reply | None = None,
    prefix: str = "/load",
    max_in_flight: int = 8,
) -> Load:
    """Register ``endpoints`` endpoints (an account each) answering ``reply``, emit their events."""
    paths = [f"{prefix}{i}" for i in range(endpoints)]
    for path in paths:
        if reply is not None:
            receiver.script(path, reply)
        await create_endpoint(
            conn, receiver.url(path), account=account_of(path), max_in_flight=max_in_flight
        )
    return Load(
        {path: await emit_many(conn, account_of(path), events_per_endpoint) for path in paths}
    )


async def add_events(conn: asyncpg.Connection, load: Load, per_endpoint: int) -> Load:
    """Emit ``per_endpoint`` more events for every endpoint of ``load``; returns the grown load."""
    grown = dict(load.events)
    for path in load.paths:
        grown[path] = [*grown[path], *await emit_many(conn, account_of(path), per_endpoint)]
    return Load(grown)


def account_of(path: str) -> str:
    return "acct" + path.replace("/", "_")


async def emit_many(conn: asyncpg.Connection, account: str, n: int) -> list[int]:
    """Emit ``n`` events for ``account`` in one transaction; returns their ids."""
    rows = await conn.fetch(
        "SELECT webhooks.emit($1, 'email.sent', jsonb_build_object('n', n)) AS id"
        " FROM generate_series(1, $2::integer) AS n",
        account,
        n,
    )
    return [r["id"] for r in rows]


async def delivered(conn: asyncpg.Connection) -> int:
    """How many deliveries ended delivered."""
    return int(
        await conn.fetchval(
            "SELECT count(*) FROM webhooks.delivery_outcomes WHERE status = 'delivered'"
        )
    )


async def delivered_at_least(conn: asyncpg.Connection, count: int) -> bool:
    """True once ``count`` deliveries ended delivered (for ``wait_until``)."""
    return await delivered(conn) >= count


async def all_delivered(conn: asyncpg.Connection, load: Load) -> bool:
    """True once every delivery of ``load`` ended delivered (for ``wait_until``)."""
    return await delivered_at_least(conn, load.total)


async def leased(conn: asyncpg.Connection) -> set[int]:
    """The deliveries whose lease is held right now (claimed, and no result recorded yet)."""
    rows = await conn.fetch("SELECT id FROM webhooks.deliveries WHERE lease_token IS NOT NULL")
    return {r["id"] for r in rows}


async def only_session(conn: asyncpg.Connection) -> bool:
    """True once ``conn`` is the only client session on its database (a dead engine's are gone)."""
    others = await conn.fetchval(
        "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
        " AND backend_type = 'client backend' AND pid <> pg_backend_pid()"
    )
    return bool(others == 0)


async def no_session_of(conn: asyncpg.Connection, application_name: str) -> bool:
    """True once no session of that application is left (a dead engine's are gone)."""
    count = await conn.fetchval(
        "SELECT count(*) FROM pg_stat_activity WHERE application_name = $1", application_name
    )
    return bool(count == 0)


def sent(receiver: Receiver, paths: Iterable[str] | None = None) -> Counter[tuple[int, int]]:
    """How often the receiver saw each (delivery id, attempt number)."""
    wanted = None if paths is None else set(paths)
    return Counter(
        (int(r.headers["X-MisarMail-Delivery"]), int(r.headers["X-MisarMail-Attempt"]))
        for r in receiver.received
        if wanted is None or r.path in wanted
    )


@dataclass(frozen=True)
class History:
    """What :func:`check_delivered_once` found about the requests the receiver saw."""

    requests: int
    duplicates: int  # requests that repeated an attempt the receiver had already seen
    repeated: frozenset[int]  # the deliveries those repeats belong to


async def check_delivered_once(
    conn: asyncpg.Connection,
    receiver: Receiver,
    load: Load,
    *,
    may_repeat: Iterable[int] = (),
) -> History:
    """Assert that every delivery of ``load`` ended delivered, recorded once, as the receiver saw.

    - every event reached its endpoint at least once, and the hot table and the intake are empty;
    - each delivery has one outcome, ``delivered``, naming the attempt that succeeded;
    - each delivery has exactly one ``delivered`` attempt row, and every attempt row that is not
      ``stale`` describes a request the receiver saw (and each such request has one);
    - only deliveries in ``may_repeat`` (leased when their engine died) had an attempt sent twice.

    The database must hold only this load's deliveries.
    """
    received = {
        (r.path, r.headers["webhook-id"]) for r in receiver.received if r.path in load.events
    }
    missing = load.expected() - received
    assert not missing, (
        f"{len(missing)} events never reached their endpoint, e.g. {sorted(missing)[:3]}"
    )
    assert await conn.fetchval("SELECT count(*) FROM webhooks.deliveries") == 0
    assert await conn.fetchval("SELECT count(*) FROM webhooks.intake") == 0

    outcomes = await conn.fetch(
        "SELECT o.delivery_id, o.status, o.attempts, a.attempt, a.delivered_rows"
        " FROM webhooks.delivery_outcomes o LEFT JOIN LATERAL ("
        "   SELECT max(x.attempt) FILTER (WHERE x.outcome = 'delivered') AS attempt,"
        "          count(*) FILTER (WHERE x.outcome = 'delivered') AS delivered_rows"
        "     FROM webhooks.attempts x WHERE x.delivery_id = o.delivery_id) a ON true"
    )
    assert len(outcomes) == len({r["delivery_id"] for r in outcomes}) == load.total
    assert {r["status"] for r in outcomes} == {"delivered"}
    assert all(r["delivered_rows"] == 1 for r in outcomes), "one delivered attempt per delivery"
    assert all(r["attempts"] == r["attempt"] for r in outcomes), "the outcome names its attempt"

    rows = await conn.fetch(
        "SELECT delivery_id, attempt, outcome, status_code FROM webhooks.attempts"
        " WHERE outcome <> 'stale'"
    )
    recorded = Counter((r["delivery_id"], r["attempt"]) for r in rows)
    requests = sent(receiver, load.paths)
    assert set(recorded) == set(requests), "the attempt log and the receiver disagree"
    assert max(recorded.values()) == 1, "an attempt was recorded twice"

    # A repeat is the same attempt sent again: its first result died with the engine.
    repeated = frozenset(d for (d, _), n in requests.items() if n > 1)
    unexpected = repeated - set(may_repeat)
    assert not unexpected, f"deliveries sent twice without having been in flight: {unexpected}"
    return History(sum(requests.values()), sum(n - 1 for n in requests.values()), repeated)
