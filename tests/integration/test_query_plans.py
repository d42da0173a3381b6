"""EXPLAIN guards: the claim and emit's subscriber lookup use their indexes on 100,000-row tables.

The statements are the ones the SQL functions run, with the function's variables as parameters.
plpgsql plans them like prepared statements, custom plans first and then possibly a generic plan,
so each is checked both ways. The planner chooses freely: no enable_* settings are changed.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any
from uuid import UUID

import asyncpg
import pytest

from tests.support.db import current_template, scratch_database

ROWS = 100_000
ENDPOINTS_WITH_BACKLOG = 1_000  # 100 live deliveries each
ACCOUNTS = 25_000  # 4 endpoints each

FILL_ENDPOINTS = """
INSERT INTO webhooks.endpoints (account_id, url, event_types, secret, enabled)
SELECT 'acct_' || (g % $2), 'https://example.com/hooks/' || g,
       CASE g % 3 WHEN 0 THEN '{email.sent,email.opened}'::text[]
                  WHEN 1 THEN '{email.*}' ELSE '{*}' END,
       'whsec_AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=', g % 10 <> 0
  FROM generate_series(1, $1) AS g
"""

# Most live deliveries are due (a backlog, ready); every fifth waits for a retry (not ready), as
# migration 0004 classifies them.
FILL_DELIVERIES = """
WITH busy AS (
    SELECT array_agg(id) AS ids
      FROM (SELECT id FROM webhooks.endpoints WHERE enabled ORDER BY id LIMIT $2) AS e
)
INSERT INTO webhooks.deliveries (event_id, event_created_at, event_type, endpoint_id, due_at, ready)
SELECT g, now(), 'email.sent', busy.ids[g % $2 + 1],
       now() + CASE WHEN g % 5 = 0 THEN interval '10 minutes' ELSE -interval '1 second' * g END,
       g % 5 <> 0
  FROM generate_series(1, $1) AS g, busy
"""

# The claim's promotion: the waiting rows whose due time has come, oldest due first.
CLAIM_PROMOTE = """
SELECT d.id FROM webhooks.deliveries d
 WHERE NOT d.ready AND d.due_at <= now()
 ORDER BY d.due_at
 LIMIT 1000
 FOR UPDATE SKIP LOCKED
"""

# The claim, dispatch ordering: the endpoint's ready rows, oldest first.
CLAIM_DUE = """
SELECT d.id FROM webhooks.deliveries d
 WHERE d.endpoint_id = $1 AND d.ready AND d.due_at <= now()
 ORDER BY d.id
 LIMIT $2
 FOR UPDATE SKIP LOCKED
"""

# The claim's count of an endpoint's rows in flight, across engines (leased, lease running).
CLAIM_LEASED = """
SELECT count(*) FROM webhooks.deliveries d
 WHERE d.endpoint_id = $1 AND d.lease_token IS NOT NULL AND d.due_at > now()
"""

# The claim, strict ordering: the endpoint's oldest live delivery, ready or not...
CLAIM_HEAD = """
SELECT d.id, d.ready, d.due_at FROM webhooks.deliveries d
 WHERE d.endpoint_id = $1 AND d.attempts >= 0 ORDER BY d.id LIMIT 1
"""

# ...then that row locked by id.
CLAIM_HEAD_LOCK = """
SELECT d.id, d.ready, d.due_at FROM webhooks.deliveries d
 WHERE d.id = $1
 FOR UPDATE SKIP LOCKED
"""

# next_due_at_v1: the earliest of the waiting set, or any ready row's due time.
NEXT_DUE = """
SELECT least((SELECT d.due_at FROM webhooks.deliveries d
               WHERE NOT d.ready ORDER BY d.due_at LIMIT 1),
             (SELECT d.due_at FROM webhooks.deliveries d
               WHERE d.ready ORDER BY d.endpoint_id, d.id LIMIT 1),
             (SELECT i.created_at FROM webhooks.intake i ORDER BY i.id LIMIT 1))
"""

# The claim's loose index scan: the endpoints that have ready deliveries, one probe each, walked
# from after $1 to the end, then from the start up to $1.
CLAIM_ENDPOINTS = """
WITH RECURSIVE above(id) AS (
    (SELECT d.endpoint_id FROM webhooks.deliveries d
      WHERE d.ready AND d.endpoint_id > $1::uuid ORDER BY d.endpoint_id LIMIT 1)
    UNION ALL
    SELECT (SELECT d.endpoint_id FROM webhooks.deliveries d
             WHERE d.endpoint_id > above.id AND d.ready
             ORDER BY d.endpoint_id LIMIT 1)
      FROM above WHERE above.id IS NOT NULL
), below(id) AS (
    (SELECT d.endpoint_id FROM webhooks.deliveries d
      WHERE d.ready AND d.endpoint_id <= $1::uuid ORDER BY d.endpoint_id LIMIT 1)
    UNION ALL
    SELECT (SELECT d.endpoint_id FROM webhooks.deliveries d
             WHERE d.endpoint_id > below.id AND d.endpoint_id <= $1::uuid AND d.ready
             ORDER BY d.endpoint_id LIMIT 1)
      FROM below WHERE below.id IS NOT NULL
)
SELECT a.id FROM above a WHERE a.id IS NOT NULL
UNION ALL
SELECT b.id FROM below b WHERE b.id IS NOT NULL
"""

# The subscriber lookups of sql/functions/30_emit.sql: subscribed()'s probe (the example trigger's
# guard, all that an account without endpoints costs it) and emit's probe (with filters).
SUBSCRIBED_PROBE = """
SELECT FROM webhooks.endpoints e
 WHERE e.account_id = $1 AND e.enabled
   AND webhooks.subscribes(e.event_types, $2)
"""
EMIT_PROBE = """
SELECT FROM webhooks.endpoints e
 WHERE e.account_id = $1 AND e.enabled
   AND webhooks.takes(e.event_types, e.filter, $2, $3::jsonb)
 LIMIT 1
"""

# fan_out_v1 (sql/functions/35_intake.sql): the oldest intake rows out, their events and one
# delivery per endpoint that takes each, in one statement; claim_v2 calls it for FAN_OUT_BATCH.
FAN_OUT_BATCH = 200
FAN_OUT = """
WITH taken AS MATERIALIZED (
    DELETE FROM webhooks.intake i
     WHERE i.id = ANY (ARRAY(SELECT n.id FROM webhooks.intake n ORDER BY n.id LIMIT $1))
    RETURNING i.*),
matched AS MATERIALIZED (
    SELECT t.id, t.type, t.created_at, e.id AS endpoint_id
      FROM taken t
      JOIN webhooks.endpoints e
        ON e.account_id = t.account_id
       AND webhooks.receives(e.enabled, e.created_at, e.event_types, e.filter,
                             t.created_at, t.type, t.payload)),
ev AS (
    INSERT INTO webhooks.events (id, account_id, type, payload, idempotency_key, created_at)
    OVERRIDING SYSTEM VALUE
    SELECT t.id, t.account_id, t.type, t.payload, t.idempotency_key, t.created_at
      FROM taken t WHERE t.id IN (SELECT m.id FROM matched m)),
d AS (
    INSERT INTO webhooks.deliveries (event_id, event_created_at, event_type, endpoint_id,
                                     created_at, due_at)
    SELECT m.id, m.created_at, m.type, m.endpoint_id, m.created_at, m.created_at
      FROM matched m ORDER BY m.id, m.endpoint_id)
SELECT count(*) FROM taken
"""


# Where each statement above comes from, and the function's own expression for each parameter:
# test_the_explained_statements_are_the_ones_the_functions_run holds the copies to the files.
SOURCES: dict[str, tuple[str, str, dict[str, str]]] = {
    "CLAIM_PROMOTE": (CLAIM_PROMOTE, "40_claim.sql", {}),
    "CLAIM_DUE": (CLAIM_DUE, "40_claim.sql", {"$1": "v_ep.id", "$2": "v_room"}),
    "CLAIM_LEASED": (CLAIM_LEASED, "40_claim.sql", {"$1": "v_ep.id"}),
    "CLAIM_HEAD": (CLAIM_HEAD, "40_claim.sql", {"$1": "v_ep.id"}),
    "CLAIM_HEAD_LOCK": (CLAIM_HEAD_LOCK, "40_claim.sql", {"$1": "v_head.id"}),
    "NEXT_DUE": (NEXT_DUE, "40_claim.sql", {}),
    "CLAIM_ENDPOINTS": (CLAIM_ENDPOINTS, "40_claim.sql", {"$1::uuid": "v_from"}),
    "SUBSCRIBED_PROBE": (
        SUBSCRIBED_PROBE, "30_emit.sql", {"$1": "p_account_id", "$2": "p_event_type"}
    ),
    "EMIT_PROBE": (
        EMIT_PROBE, "30_emit.sql",
        {"$1": "p_account_id", "$2": "p_event_type", "$3::jsonb": "p_payload"},
    ),
    "FAN_OUT": (FAN_OUT, "35_intake.sql", {"$1": "p_limit"}),
    # The batch the plans are checked for is the one the claim asks for.
    "CLAIM_FAN_OUT": (
        "SELECT webhooks.fan_out_v1($1);", "40_claim.sql", {"$1": str(FAN_OUT_BATCH)}
    ),
}  # fmt: skip
FUNCTIONS = Path(__file__).resolve().parents[2] / "sql" / "functions"


def normalized_sql(text: str) -> str:
    """SQL with comments dropped and whitespace collapsed, PL/pgSQL's ``PERFORM`` read as
    ``SELECT`` and its ``INTO v_...[, v_...]`` targets dropped: what a copy above must appear in."""
    text = re.sub(r"--[^\n]*", " ", text)
    text = re.sub(r"\bPERFORM\b", "SELECT", text)
    text = re.sub(r"\s+INTO\s+v_\w+(\s*,\s*v_\w+)*", " ", text)
    text = " ".join(text.split())
    return text.replace("( ", "(").replace(" )", ")")


@pytest.fixture(scope="module")
async def big_db(pg_server_url: str, template_db: str) -> AsyncIterator[str]:
    """One migrated database for this module with 100,000 endpoints and 100,000 live deliveries."""
    name = f"misar_plans_{os.getpid()}"
    template = await current_template(pg_server_url, template_db)
    async with scratch_database(pg_server_url, name, template=template) as url:
        conn = await asyncpg.connect(url)
        try:
            async with conn.transaction():
                await conn.execute(FILL_ENDPOINTS, ROWS, ACCOUNTS)
                await conn.execute(FILL_DELIVERIES, ROWS, ENDPOINTS_WITH_BACKLOG)
            await conn.execute("ANALYZE webhooks.endpoints, webhooks.deliveries")
        finally:
            await conn.close()
        yield url


@pytest.fixture
async def big(big_db: str) -> AsyncIterator[asyncpg.Connection]:
    """A connection to the 100,000-row database."""
    conn = await asyncpg.connect(big_db)
    try:
        yield conn
    finally:
        await conn.close()


def plan_nodes(node: dict[str, Any]) -> Iterator[dict[str, Any]]:
    yield node
    for child in node.get("Plans", []):
        yield from plan_nodes(child)


def scans(plan_json: str) -> dict[str, set[str]]:
    """Table name -> the indexes its scans use ('' stands for a sequential scan)."""
    [top] = json.loads(plan_json)
    found: dict[str, set[str]] = {}
    for node in plan_nodes(top["Plan"]):
        kind = node["Node Type"]
        if kind in ("Index Scan", "Index Only Scan"):
            found.setdefault(node["Relation Name"], set()).add(node["Index Name"])
        elif kind == "Bitmap Heap Scan":
            found.setdefault(node["Relation Name"], set()).update(
                n["Index Name"] for n in plan_nodes(node) if n["Node Type"] == "Bitmap Index Scan"
            )
        elif kind == "Seq Scan":
            found.setdefault(node["Relation Name"], set()).add("")
    return found


async def custom_plan(conn: asyncpg.Connection, sql: str, *args: Any) -> dict[str, set[str]]:
    return scans(await conn.fetchval("EXPLAIN (FORMAT JSON) " + sql, *args))


async def generic_plan(
    conn: asyncpg.Connection, sql: str, types: str, values: str
) -> dict[str, set[str]]:
    """The plan a long-lived plpgsql function may settle on, whatever the parameter values."""
    await conn.execute(f"PREPARE probe ({types}) AS {sql}")
    try:
        await conn.execute("SET plan_cache_mode = force_generic_plan")
        return scans(await conn.fetchval(f"EXPLAIN (FORMAT JSON) EXECUTE probe ({values})"))
    finally:
        await conn.execute("RESET plan_cache_mode")
        await conn.execute("DEALLOCATE probe")


async def backlog_endpoint(conn: asyncpg.Connection) -> UUID:
    """One of the 1,000 endpoints with live deliveries."""
    endpoint_id: UUID = await conn.fetchval(
        "SELECT endpoint_id FROM webhooks.deliveries ORDER BY id LIMIT 1"
    )
    return endpoint_id


# With a generic plan the values do not matter; these only fill the parameters.
ANY_UUID = "'00000000-0000-0000-0000-000000000000'"
# Where the claim's walk turns when no earlier claim stopped anywhere: the whole walk is the second.
MAX_UUID = UUID("ffffffff-ffff-ffff-ffff-ffffffffffff")


async def test_tables_are_big(big: asyncpg.Connection) -> None:
    """The plan checks below run on 100,000 endpoints and 100,000 deliveries, analyzed."""
    assert await big.fetchval("SELECT count(*) FROM webhooks.endpoints") == ROWS
    assert await big.fetchval("SELECT count(*) FROM webhooks.deliveries") == ROWS
    assert (
        await big.fetchval(
            "SELECT count(*) FROM webhooks.deliveries WHERE endpoint_id = $1",
            await backlog_endpoint(big),
        )
        == ROWS // ENDPOINTS_WITH_BACKLOG
    )
    for table in ("endpoints", "deliveries"):
        estimate = await big.fetchval(
            "SELECT reltuples FROM pg_class WHERE oid = $1::regclass", f"webhooks.{table}"
        )
        assert abs(estimate - ROWS) < ROWS * 0.01


async def test_claim_promotion_uses_waiting_index(big: asyncpg.Connection) -> None:
    """The claim's promotion step scans deliveries_waiting_idx, the waiting set in due order."""
    custom = await custom_plan(big, CLAIM_PROMOTE)
    assert custom == {"deliveries": {"deliveries_waiting_idx"}}
    generic = await generic_plan(big, CLAIM_PROMOTE.replace("1000", "$1"), "integer", "1000")
    assert generic == {"deliveries": {"deliveries_waiting_idx"}}


async def test_claim_due_rows_use_ready_index(big: asyncpg.Connection) -> None:
    """The claim's per-endpoint query scans deliveries_ready_idx."""
    custom = await custom_plan(big, CLAIM_DUE, await backlog_endpoint(big), 8)
    assert custom == {"deliveries": {"deliveries_ready_idx"}}
    generic = await generic_plan(big, CLAIM_DUE, "uuid, integer", f"{ANY_UUID}, 8")
    assert generic == {"deliveries": {"deliveries_ready_idx"}}


async def test_claim_count_of_leases_uses_leased_index(big: asyncpg.Connection) -> None:
    """The claim counts an endpoint's leases through deliveries_leases_idx, never its other rows."""
    custom = await custom_plan(big, CLAIM_LEASED, await backlog_endpoint(big))
    assert custom == {"deliveries": {"deliveries_leases_idx"}}
    generic = await generic_plan(big, CLAIM_LEASED, "uuid", ANY_UUID)
    assert generic == {"deliveries": {"deliveries_leases_idx"}}


async def test_claim_count_of_leases_can_be_planned_on_no_other_index(
    conn: asyncpg.Connection,
) -> None:
    """The claim's plans are generic and made once per connection, often just after the engine's
    idle vacuum, when the statistics say the hot table is empty and every partial index is costed
    as empty: then any index that can serve the count of an endpoint's leases may be the one
    chosen, until the statistics change. So deliveries_leases_idx must be the only one. Each index
    of the table is left alone in turn, beside the primary key (the others dropped in a
    transaction rolled back), and the count's generic plan uses it or falls back to the disabled
    sequential scan. With deliveries_leased_idx (migration 0006), whose predicate shared "not
    ready" with the waiting set's, the count could be planned on deliveries_waiting_idx: every
    lease and scheduled retry of every endpoint, read once per endpoint."""
    indexes = [
        r["name"]
        for r in await conn.fetch(
            """SELECT c.relname AS name FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid
                WHERE i.indrelid = 'webhooks.deliveries'::regclass ORDER BY 1"""
        )
    ]
    assert "deliveries_waiting_idx" in indexes
    assert "deliveries_ready_idx" in indexes
    usable = set()
    for alone in indexes:
        tx = conn.transaction()
        await tx.start()
        try:
            for other in indexes:
                # The primary key stays (other tables' keys refer to it); it has no condition
                # the count could use.
                if other not in (alone, "deliveries_pkey"):
                    await conn.execute(f"DROP INDEX webhooks.{other}")
            await conn.execute("SET LOCAL enable_seqscan = off")  # as claim_v2 runs
            plan = await generic_plan(conn, CLAIM_LEASED, "uuid", ANY_UUID)
            if plan["deliveries"] != {""}:
                assert plan == {"deliveries": {alone}}
                usable.add(alone)
        finally:
            await tx.rollback()
    assert usable == {"deliveries_leases_idx"}


async def test_claim_strict_head_uses_endpoint_id_index(big: asyncpg.Connection) -> None:
    """The strict-ordering head lookup scans deliveries_endpoint_id_idx (every live row of the
    endpoint, ready or not), and locks the head through the primary key."""
    custom = await custom_plan(big, CLAIM_HEAD, await backlog_endpoint(big))
    assert custom == {"deliveries": {"deliveries_endpoint_id_idx"}}
    generic = await generic_plan(big, CLAIM_HEAD, "uuid", ANY_UUID)
    assert generic == {"deliveries": {"deliveries_endpoint_id_idx"}}
    assert await custom_plan(big, CLAIM_HEAD_LOCK, 1) == {"deliveries": {"deliveries_pkey"}}
    generic = await generic_plan(big, CLAIM_HEAD_LOCK, "bigint", "1")
    assert generic == {"deliveries": {"deliveries_pkey"}}


async def test_claim_loose_scan_uses_ready_index(big: asyncpg.Connection) -> None:
    """The claim's walk over endpoints with ready deliveries probes deliveries_ready_idx only,
    finds none of the endpoints whose every delivery waits for a retry, and comes out in the
    claim's rotation (after the turning point, then up to it) without a sort, so that a claim
    which fills early stops the walk early."""
    turn = await backlog_endpoint(big)
    for after in (MAX_UUID, turn):
        plan = await custom_plan(big, CLAIM_ENDPOINTS, after)
        assert plan == {"deliveries": {"deliveries_ready_idx"}}
    generic = await generic_plan(big, CLAIM_ENDPOINTS, "uuid", ANY_UUID)
    assert generic == {"deliveries": {"deliveries_ready_idx"}}
    plan_text = await big.fetchval("EXPLAIN (FORMAT JSON) " + CLAIM_ENDPOINTS, turn)
    assert '"Sort"' not in json.dumps(plan_text)
    walk = [r["id"] for r in await big.fetch(CLAIM_ENDPOINTS, MAX_UUID)]
    # Endpoint k holds rows g with g % 1,000 = k - 1, so a fifth of the endpoints hold only rows
    # with g % 5 = 0: waiting ones.
    assert len(walk) == ENDPOINTS_WITH_BACKLOG * 4 // 5
    assert walk == sorted(walk)
    rotated = [r["id"] for r in await big.fetch(CLAIM_ENDPOINTS, turn)]
    assert rotated == [i for i in walk if i > turn] + [i for i in walk if i <= turn]


async def test_next_due_at_uses_waiting_and_ready_indexes(big: asyncpg.Connection) -> None:
    """The engine's retry timer reads one entry of deliveries_waiting_idx, one of
    deliveries_ready_idx and one of the intake's primary key, however many rows wait."""
    assert await custom_plan(big, NEXT_DUE) == {
        "deliveries": {"deliveries_waiting_idx", "deliveries_ready_idx"},
        "intake": {"intake_pkey"},
    }
    assert await big.fetchval(NEXT_DUE) == await big.fetchval("SELECT webhooks.next_due_at_v1()")


async def test_per_endpoint_indexes_serve_only_statements_that_ask_for_them(
    big: asyncpg.Connection,
) -> None:
    """The per-endpoint indexes are partial on attempts >= 0 (true of every row) so that lookups by
    id (record_attempts_v1, the claim's lease update) can only use the primary key: on a table
    whose statistics say it is empty, a full scan of (endpoint_id, id) with id as a non-leading
    column costs the same and once won. Operators' reads by endpoint say the predicate and keep
    the index, through the delivery_log view too."""
    by_id = "SELECT * FROM webhooks.deliveries d WHERE d.id = ANY ($1::bigint[])"
    assert await custom_plan(big, by_id, [1, 2, 3]) == {"deliveries": {"deliveries_pkey"}}
    lease = "UPDATE webhooks.deliveries d SET ready = false WHERE d.id = ANY ($1::bigint[])"
    assert await custom_plan(big, lease, [1, 2, 3]) == {"deliveries": {"deliveries_pkey"}}
    endpoint_id = await backlog_endpoint(big)
    pending = "SELECT * FROM webhooks.delivery_log WHERE endpoint_id = $1 AND status = 'pending'"
    log = await custom_plan(big, pending, endpoint_id)
    assert log["deliveries"] == {"deliveries_endpoint_id_idx"}
    assert "" not in log.get("delivery_outcomes", set())
    rows = await big.fetch(pending, endpoint_id)
    assert len(rows) == await big.fetchval(
        "SELECT count(*) FROM webhooks.deliveries WHERE endpoint_id = $1 AND attempts = 0",
        endpoint_id,
    )


# acct_7's endpoints in the big tables: FILL_ENDPOINTS gives it the endpoints g = 7 + k x ACCOUNTS,
# all enabled (g % 10 is 7), and every event_types value it writes covers email.sent.
EMIT_ARGS = ("acct_7", "email.sent", '{"n": 1}', 1)
EMIT_LOOKUPS = [
    (SUBSCRIBED_PROBE, 2, "text, text", "'acct_7', 'email.sent'"),
    (EMIT_PROBE, 3, "text, text, jsonb", """'acct_7', 'email.sent', '{"n": 1}'"""),
]


@pytest.mark.parametrize(
    ("query", "arity", "types", "values"), EMIT_LOOKUPS, ids=["guard", "probe"]
)
async def test_emit_lookup_uses_enabled_account_index(
    big: asyncpg.Connection, query: str, arity: int, types: str, values: str
) -> None:
    """The guard's and emit's probes use endpoints_enabled_account_idx, not the whole table (the
    inlined webhooks.subscribes and webhooks.takes filters do not get in the way)."""
    args = EMIT_ARGS[:arity]
    custom = await custom_plan(big, query, *args)
    assert custom == {"endpoints": {"endpoints_enabled_account_idx"}}
    generic = await generic_plan(big, query, types, values)
    assert generic == {"endpoints": {"endpoints_enabled_account_idx"}}
    rows = await big.fetch(query, *args)
    expected = await big.fetch(
        "SELECT id FROM webhooks.endpoints WHERE url = ANY ($1::text[]) ORDER BY id",
        [f"https://example.com/hooks/{g}" for g in range(7, ROWS + 1, ACCOUNTS)],
    )
    assert len(expected) == ROWS // ACCOUNTS
    if query is EMIT_PROBE:
        assert len(rows) == 1
    else:
        assert len(rows) == len(expected)


@pytest.mark.parametrize("accepted", [10, 200, 20_000])
async def test_fan_out_reads_only_the_accepted_events_accounts_endpoints(
    big: asyncpg.Connection, accepted: int
) -> None:
    """The fan-out finds each accepted event's endpoints through endpoints_enabled_account_idx,
    never by reading the 100,000 endpoints, whether few events wait or a backlog (after an
    outage) does; and it writes exactly one delivery per endpoint that takes each event. In a
    transaction rolled back at the end: the module's tables stay as they were."""
    tx = big.transaction()
    await tx.start()
    try:
        await big.execute(
            "INSERT INTO webhooks.intake (account_id, type, payload, created_at)"
            " SELECT 'acct_' || (g % $2), 'email.sent', '{}', now() FROM generate_series(1, $1) g",
            accepted,
            ACCOUNTS,
        )
        await big.execute("ANALYZE webhooks.intake")
        for plan in (
            await custom_plan(big, FAN_OUT, FAN_OUT_BATCH),
            await generic_plan(big, FAN_OUT, "integer", str(FAN_OUT_BATCH)),
        ):
            assert plan["endpoints"] == {"endpoints_enabled_account_idx"}, plan
            if accepted > FAN_OUT_BATCH:  # a backlog: only the batch is read, by the key
                assert plan["intake"] == {"intake_pkey"}, plan
        expected = await big.fetchval(
            "SELECT count(*) FROM (SELECT id, account_id FROM webhooks.intake ORDER BY id"
            "  LIMIT $1) i JOIN webhooks.endpoints e ON e.account_id = i.account_id"
            " WHERE e.enabled",  # every endpoint of these tables takes email.sent
            FAN_OUT_BATCH,
        )
        assert expected > 0
        before = await big.fetchval("SELECT count(*) FROM webhooks.deliveries")
        assert await big.fetchval(FAN_OUT, FAN_OUT_BATCH) == min(accepted, FAN_OUT_BATCH)
        assert await big.fetchval("SELECT count(*) FROM webhooks.deliveries") == before + expected
    finally:
        await tx.rollback()


def plan_joins(plan_json: str) -> list[tuple[str, str]]:
    """The plan's joins, top down: (node type, join type)."""
    [top] = json.loads(plan_json)
    return [
        (node["Node Type"], node["Join Type"])
        for node in plan_nodes(top["Plan"])
        if "Join Type" in node
    ]


# One event for each of 1,000 accounts (the module's accounts have 4 endpoints each), with keys or
# without: what emit_many's write plans are observed on.
EMIT_MANY_CALL = """
SELECT webhooks.emit_many(ARRAY(
    SELECT ROW('acct_' || g, 'email.sent', jsonb_build_object('n', g),
               CASE WHEN $1 THEN 'key_' || g END)::webhooks.new_event
      FROM generate_series(1, 1000) AS g))
"""


async def executed_plans(conn: asyncpg.Connection, sql: str, *args: Any) -> list[dict[str, Any]]:
    """The plans of every statement ``sql`` runs, nested ones (a function's) included, as
    auto_explain reports them while they run: what a function really executes, with its own
    settings. In a transaction rolled back at the end."""
    reports: list[str] = []

    def collect(_: object, message: asyncpg.PostgresLogMessage) -> None:
        reports.append(message.message)

    conn.add_log_listener(collect)
    tx = conn.transaction()
    await tx.start()
    try:
        for setting in (
            "auto_explain.log_min_duration = 0",
            "auto_explain.log_nested_statements = on",
            "auto_explain.log_analyze = on",
            "auto_explain.log_verbose = on",
            "auto_explain.log_format = json",
            "auto_explain.log_level = notice",
            "client_min_messages = notice",
        ):
            await conn.execute(f"SET LOCAL {setting}")
        await conn.execute("LOAD 'auto_explain'")
        await conn.fetchval(sql, *args)
    finally:
        await tx.rollback()
        conn.remove_log_listener(collect)
    return [json.loads(report.split("plan:", 1)[1]) for report in reports if "plan:" in report]


@pytest.mark.parametrize("keyed", [False, True], ids=["unkeyed", "keyed"])
async def test_emit_many_reads_each_event_and_endpoint_once(
    big: asyncpg.Connection, keyed: bool
) -> None:
    """emit_many runs generic plans (its SET clause), which cannot know how many events an array
    holds. Its write, as it runs for 1,000 events over 1,000 accounts, still matches the events to
    their accounts' endpoints with a hashed semi-join that reads each event once: no nested loop,
    which would read one side once per row of the other (a statement's events over thousands of
    accounts would cost their product), and without keys no subplan per event either. The
    endpoints are found through endpoints_enabled_account_idx, and the payload check is inlined
    (a call of webhooks.stored_payload per event would run a query per event)."""
    config = await big.fetchval(
        "SELECT proconfig FROM pg_proc"
        " WHERE oid = 'webhooks.emit_many(webhooks.new_event[])'::regprocedure"
    )
    assert "plan_cache_mode=force_generic_plan" in config
    plans = await executed_plans(big, EMIT_MANY_CALL, keyed)
    [write] = [p for p in plans if "INSERT INTO webhooks.intake" in p["Query Text"]]
    plan = json.dumps([write])
    joins = plan_joins(plan)
    assert ("Hash Join", "Semi") in joins, plan
    assert all(kind != "Nested Loop" for kind, _ in joins), plan
    [semi] = [n for n in plan_nodes(write["Plan"]) if n.get("Join Type") == "Semi"]
    events = [n for n in plan_nodes(semi) if n["Node Type"] == "Function Scan"]
    assert [(n["Actual Rows"], n["Actual Loops"]) for n in events] == [(1000, 1)], plan
    if not keyed:
        assert joins == [("Hash Join", "Semi")], plan
        assert "SubPlan" not in plan, plan
    assert scans(plan)["endpoints"] == {"endpoints_enabled_account_idx"}, plan
    executed = json.dumps(write["Plan"])  # the query text names the function, the plan not
    assert "webhooks.stored_payload" not in executed, plan
    assert "octet_length" in executed, plan


SUBSCRIBED_ACCOUNTS_CALL = """
SELECT webhooks.subscribed_accounts(ARRAY(SELECT 'acct_' || g FROM generate_series(1, 1000) AS g),
                                    '{email.sent}')
"""


async def test_subscribed_accounts_probes_the_index_once_per_account(
    big: asyncpg.Connection,
) -> None:
    """The statement-level triggers' guard, for a statement's 1,000 accounts among 25,000 with
    endpoints, reads the accounts' enabled endpoints through endpoints_enabled_account_idx, not
    the whole table, however its plan was made."""
    for _ in range(7):  # past the plan cache's five custom plans, to its generic plan if it chooses
        found = await big.fetchval(SUBSCRIBED_ACCOUNTS_CALL)
        # Every account's endpoints subscribe to email.sent; one account in ten has all of its
        # endpoints disabled (FILL_ENDPOINTS).
        assert len(found) == 900
        plans = await executed_plans(big, SUBSCRIBED_ACCOUNTS_CALL)
        [read] = [p for p in plans if "FROM webhooks.endpoints" in p["Query Text"]]
        plan = json.dumps([read])
        assert scans(plan)["endpoints"] == {"endpoints_enabled_account_idx"}, plan


@pytest.mark.parametrize("name", sorted(SOURCES))
def test_the_explained_statements_are_the_ones_the_functions_run(name: str) -> None:
    """Each statement this module EXPLAINs appears in its function's file, with the function's
    own expressions in place of the parameters, so that a change to the function that the copy
    does not follow fails here instead of leaving the plan test checking a statement nobody
    runs."""
    copy, file, parameters = SOURCES[name]
    text = copy
    for parameter, expression in sorted(parameters.items(), key=lambda p: -len(p[0])):
        text = text.replace(parameter, expression)
    assert "$" not in text, f"{name}: a parameter without its expression"
    source = normalized_sql((FUNCTIONS / file).read_text())
    assert normalized_sql(text) in source, f"{name} no longer appears in sql/functions/{file}"
