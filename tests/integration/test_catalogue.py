"""The facts Python, the OpenAPI document and SQL each state agree, read from a migrated database.

Endpoint defaults and bounds, orderings, attempt outcomes, delivery statuses and the event type
catalogue are written once in Python (engine/models.py, engine/db/keys.py) or in SQL; where the
other side must repeat them (a column default, a CHECK, the document's enums), a test here holds
the copy equal to the source.
"""

from __future__ import annotations

import dataclasses
import json
import re
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import asyncpg
import pytest

from engine import portal_tokens
from engine.admin.routes import openapi_document
from engine.db import keys
from engine.db.read_models import DeliveryStatus
from engine.delivery.actor import LEASE_MARGIN_S
from engine.models import (
    DEFAULT_MAX_IN_FLIGHT,
    DEFAULT_ROTATION_GRACE,
    DEFAULT_TIMEOUT_S,
    ENDPOINT_DEFAULTS,
    MAX_HEADERS,
    MAX_IN_FLIGHT_BOUNDS,
    MAX_RETRY_DELAYS,
    MAX_ROTATION_GRACE,
    RESERVED_HEADER_NAMES,
    RESERVED_HEADER_PREFIXES,
    TIMEOUT_S_BOUNDS,
    AttemptOutcome,
    EndpointOptions,
    Ordering,
    is_reserved_header,
)
from tests.support.db import error_of

DOC: dict[str, Any] = json.loads(openapi_document())
SCHEMAS: dict[str, Any] = DOC["components"]["schemas"]
TEXT_LITERAL = re.compile(r"'([^']*)'::text")


async def column_default(conn: asyncpg.Connection, table: str, column: str) -> str:
    value: str | None = await conn.fetchval(
        "SELECT column_default FROM information_schema.columns"
        " WHERE table_schema = 'webhooks' AND table_name = $1 AND column_name = $2",
        table,
        column,
    )
    assert value is not None, f"webhooks.{table}.{column} has no default"
    return value


async def catalogue(conn: asyncpg.Connection) -> set[str]:
    return {r["name"] for r in await conn.fetch("SELECT name FROM webhooks.event_types")}


def enums(node: Any, path: str = "") -> Iterator[tuple[str, list[Any]]]:
    """Every ``enum`` of the document, with its JSON pointer."""
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "enum":
                yield path, value
            else:
                yield from enums(value, f"{path}/{key}")
    elif isinstance(node, list):
        for i, value in enumerate(node):
            yield from enums(value, f"{path}/{i}")


async def test_default_max_in_flight_is_the_column_default(conn: asyncpg.Connection) -> None:
    """DEFAULT_MAX_IN_FLIGHT, by which the dispatcher sizes new endpoints, is the column default."""
    default = await column_default(conn, "endpoints", "max_in_flight")
    assert default == str(DEFAULT_MAX_IN_FLIGHT)
    assert ENDPOINT_DEFAULTS.max_in_flight == DEFAULT_MAX_IN_FLIGHT


async def test_endpoint_defaults_are_the_column_defaults(conn: asyncpg.Connection) -> None:
    """A new endpoint's ordering and description default in Python as in the endpoints table."""
    assert await column_default(conn, "endpoints", "ordering") == (
        f"'{ENDPOINT_DEFAULTS.ordering}'::text"
    )
    assert await column_default(conn, "endpoints", "description") == (
        f"'{ENDPOINT_DEFAULTS.description}'::text"
    )
    assert ENDPOINT_DEFAULTS.rate_limit_per_s is None
    assert await conn.fetchval(
        "SELECT is_nullable = 'YES' FROM information_schema.columns WHERE table_schema ="
        " 'webhooks' AND table_name = 'endpoints' AND column_name = 'rate_limit_per_s'"
    )


async def test_sql_create_endpoint_defaults_are_pythons(conn: asyncpg.Connection) -> None:
    """webhooks.create_endpoint called without options, as the app may, gives ENDPOINT_DEFAULTS."""
    endpoint_id = await conn.fetchval(
        "SELECT id FROM webhooks.create_endpoint('acct_1', 'https://example.com/h', ARRAY['*'])"
    )
    row = await conn.fetchrow(
        "SELECT description, max_in_flight, ordering, rate_limit_per_s, headers::text,"
        " filter::text, retry_schedule, timeout_s FROM webhooks.endpoints WHERE id = $1",
        endpoint_id,
    )
    assert row is not None
    assert tuple(row) == (
        ENDPOINT_DEFAULTS.description,
        ENDPOINT_DEFAULTS.max_in_flight,
        ENDPOINT_DEFAULTS.ordering,
        ENDPOINT_DEFAULTS.rate_limit_per_s,
        json.dumps(ENDPOINT_DEFAULTS.headers),
        ENDPOINT_DEFAULTS.filter,
        ENDPOINT_DEFAULTS.retry_schedule,
        ENDPOINT_DEFAULTS.timeout_s,
    )


@pytest.mark.parametrize(
    ("max_in_flight", "accepted"),
    [
        (MAX_IN_FLIGHT_BOUNDS[0] - 1, False),
        (MAX_IN_FLIGHT_BOUNDS[0], True),
        (MAX_IN_FLIGHT_BOUNDS[1], True),
        (MAX_IN_FLIGHT_BOUNDS[1] + 1, False),
    ],
)
async def test_max_in_flight_bounds_are_what_sql_accepts(
    conn: asyncpg.Connection, max_in_flight: int, accepted: bool
) -> None:
    """SQL accepts max_in_flight exactly within MAX_IN_FLIGHT_BOUNDS, the API's and CLI's range."""
    call = conn.fetchval(
        "SELECT id FROM webhooks.create_endpoint('acct_1', 'https://example.com/h',"
        " ARRAY['*'], p_max_in_flight => $1)",
        max_in_flight,
    )
    if accepted:
        assert await call is not None
    else:
        error = await error_of(conn, call)
        assert (error.sqlstate, error.column_name) == ("WH001", "max_in_flight")


async def test_rotation_grace_default_is_sqls(conn: asyncpg.Connection) -> None:
    """rotate_secret without a grace keeps the old secret for DEFAULT_ROTATION_GRACE."""
    endpoint_id = await conn.fetchval(
        "SELECT id FROM webhooks.create_endpoint('acct_1', 'https://example.com/h', ARRAY['*'])"
    )
    async with conn.transaction():  # now() stays the rotation's time
        await conn.fetchval("SELECT webhooks.rotate_secret($1)", endpoint_id)
        grace = await conn.fetchval(
            "SELECT previous_secret_expires_at - now() FROM webhooks.endpoints WHERE id = $1",
            endpoint_id,
        )
    assert grace == DEFAULT_ROTATION_GRACE


@pytest.mark.parametrize(
    ("grace", "accepted"),
    [
        (MAX_ROTATION_GRACE, True),
        (MAX_ROTATION_GRACE + timedelta(seconds=1), False),
    ],
)
async def test_rotation_grace_limit_is_what_sql_accepts(
    conn: asyncpg.Connection, grace: timedelta, accepted: bool
) -> None:
    """SQL accepts a rotation grace up to MAX_ROTATION_GRACE, the API's limit, and no longer."""
    endpoint_id = await conn.fetchval(
        "SELECT id FROM webhooks.create_endpoint('acct_1', 'https://example.com/h', ARRAY['*'])"
    )
    call = conn.fetchval("SELECT webhooks.rotate_secret($1, $2)", endpoint_id, grace)
    if accepted:
        assert await call is not None
    else:
        error = await error_of(conn, call)
        assert (error.sqlstate, error.column_name) == ("WH001", "grace")


async def test_orderings_are_what_sql_accepts(conn: asyncpg.Connection) -> None:
    """The endpoints table's CHECK on ordering allows exactly the Ordering enum's values."""
    check = await conn.fetchval(
        "SELECT pg_get_constraintdef(c.oid) FROM pg_constraint c"
        " WHERE c.conrelid = 'webhooks.endpoints'::regclass AND c.contype = 'c'"
        " AND pg_get_constraintdef(c.oid) LIKE '%ordering%'"
    )
    assert set(TEXT_LITERAL.findall(check)) == {o.value for o in Ordering}


async def test_attempt_outcomes_are_what_record_attempts_returns(
    conn: asyncpg.Connection,
) -> None:
    """AttemptOutcome is the set record_attempts_v1 assigns and the attempts table allows."""
    source = await conn.fetchval(
        "SELECT prosrc FROM pg_proc WHERE oid = 'webhooks.record_attempts_v1'::regproc"
    )
    assigned = set(re.findall(r"outcome\s*:=\s*'([a-z_]+)'", source))
    check = await conn.fetchval(
        "SELECT pg_get_constraintdef(c.oid) FROM pg_constraint c"
        " WHERE c.conrelid = 'webhooks.attempts'::regclass AND c.contype = 'c'"
        " AND pg_get_constraintdef(c.oid) LIKE '%outcome%'"
    )
    allowed = set(TEXT_LITERAL.findall(check))
    outcomes = {o.value for o in AttemptOutcome}
    assert assigned == outcomes
    assert allowed == outcomes


async def test_document_event_types_are_the_catalogue(conn: asyncpg.Connection) -> None:
    """Every event type enum of the OpenAPI document lists webhooks.event_types: the names where
    one is emitted, the names and their wildcards where endpoints subscribe."""
    names = await catalogue(conn)
    wildcards = {"*"} | {f"{name.split('.')[0]}.*" for name in names}
    found = {
        path: set(values) for path, values in enums(DOC) if names & set(values) or "*" in values
    }
    assert found == {
        "/components/schemas/EmitRequest/properties/type": names,
        "/components/schemas/TestRequest/properties/event_type": names,
        "/components/schemas/EndpointCreate/properties/event_types/items": names | wildcards,
        "/components/schemas/EndpointUpdate/properties/event_types/items": names | wildcards,
    }


def test_document_orderings_statuses_and_outcomes_are_the_enums() -> None:
    """The document's ordering, delivery status and attempt outcome enums list the Python enums."""
    orderings = [o.value for o in Ordering]
    for schema in ("Endpoint", "EndpointCreate", "EndpointUpdate"):
        assert SCHEMAS[schema]["properties"]["ordering"]["enum"] == orderings, schema
    assert SCHEMAS["DeliveryStatus"]["enum"] == [s.value for s in DeliveryStatus]
    assert SCHEMAS["Attempt"]["properties"]["outcome"]["enum"] == [o.value for o in AttemptOutcome]


def test_document_endpoint_defaults_and_bounds_are_pythons() -> None:
    """The document states the defaults and bounds of endpoint settings that Python applies."""
    create = SCHEMAS["EndpointCreate"]["properties"]
    for option in dataclasses.fields(EndpointOptions):
        default = getattr(ENDPOINT_DEFAULTS, option.name)
        expected = list(default) if isinstance(default, tuple) else default
        assert create[option.name]["default"] == expected, option.name
    for schema in ("Endpoint", "EndpointCreate", "EndpointUpdate"):
        bounds = SCHEMAS[schema]["properties"]["max_in_flight"]
        assert (bounds["minimum"], bounds["maximum"]) == MAX_IN_FLIGHT_BOUNDS, schema


def test_document_rotation_grace_is_pythons() -> None:
    """The document's grace_seconds default and maximum are the rotation grace constants."""
    grace = SCHEMAS["RotateSecretRequest"]["properties"]["grace_seconds"]
    assert (grace["minimum"], grace["maximum"], grace["default"]) == (
        0,
        MAX_ROTATION_GRACE.total_seconds(),
        DEFAULT_ROTATION_GRACE.total_seconds(),
    )


def test_document_portal_ttl_is_the_tokens() -> None:
    """The document's ttl_s bounds and default are engine.portal_tokens's."""
    ttl = SCHEMAS["PortalAccessRequest"]["properties"]["ttl_s"]
    assert (ttl["minimum"], ttl["maximum"], ttl["default"]) == (
        portal_tokens.MIN_TTL.total_seconds(),
        portal_tokens.MAX_TTL.total_seconds(),
        portal_tokens.DEFAULT_TTL.total_seconds(),
    )


def test_document_paging_and_ids_are_the_keys() -> None:
    """The document's page size range and default, and its delivery id range, are keys.py's."""
    limit = DOC["components"]["parameters"]["Limit"]["schema"]
    assert (limit["minimum"], limit["maximum"], limit["default"]) == (
        1,
        keys.MAX_PAGE,
        keys.DEFAULT_PAGE,
    )
    delivery_id = DOC["components"]["parameters"]["DeliveryId"]["schema"]
    assert (delivery_id["minimum"], delivery_id["maximum"]) == (1, keys.MAX_BIGINT)


async def test_reserved_headers_are_the_same_in_sql_and_python(conn: asyncpg.Connection) -> None:
    """webhooks.check_headers refuses exactly the names and prefixes models.py reserves (which
    request.py's headers are checked against in tests/unit/test_request.py)."""
    names = await conn.fetchval("SELECT webhooks.reserved_header_names()")
    prefixes = await conn.fetchval("SELECT webhooks.reserved_header_prefixes()")
    assert (tuple(names), tuple(prefixes)) == (RESERVED_HEADER_NAMES, RESERVED_HEADER_PREFIXES)
    for name in ("Content-Type", "X-MisarMail-Signature", "webhook-id", "X-Tenant", "Hosts"):
        assert await conn.fetchval("SELECT webhooks.is_reserved_header($1)", name) == (
            is_reserved_header(name)
        ), name


def test_document_reserved_header_pattern_is_pythons() -> None:
    """The document refuses, in any case, exactly the header names models.py reserves."""
    for schema in ("EndpointCreate", "EndpointUpdate"):
        headers = SCHEMAS[schema]["properties"]["headers"]
        reserved = re.compile(headers["propertyNames"]["not"]["pattern"])
        token = re.compile(headers["propertyNames"]["pattern"])
        assert headers["maxProperties"] == MAX_HEADERS
        for name in (
            *RESERVED_HEADER_NAMES,
            *(n.upper() for n in RESERVED_HEADER_NAMES),
            *(p + "x" for p in RESERVED_HEADER_PREFIXES),
            *(p.title() + "X" for p in RESERVED_HEADER_PREFIXES),
        ):
            assert reserved.search(name), name
            assert is_reserved_header(name), name
        for name in ("X-Tenant", "Hosts", "Content-Types", "Webhook", "X-MisarMailer"):
            assert token.search(name), name
            assert not reserved.search(name), name
            assert not is_reserved_header(name), name


async def test_timeouts_and_lease_margin_are_the_same_in_sql_and_python(
    conn: asyncpg.Connection,
) -> None:
    """The settings' default timeout, the timeout bounds, the retry schedule's length and the lease
    margin SQL checks are models.py's and the actor's; the document states the same bounds."""
    assert await column_default(conn, "settings", "request_timeout_s") == str(DEFAULT_TIMEOUT_S)
    assert await conn.fetchval("SELECT webhooks.lease_margin_s()") == LEASE_MARGIN_S
    checks = await conn.fetch(
        "SELECT pg_get_constraintdef(c.oid) AS def FROM pg_constraint c"
        " WHERE c.conrelid IN ('webhooks.endpoints'::regclass, 'webhooks.settings'::regclass)"
        " AND c.contype = 'c' AND pg_get_constraintdef(c.oid) LIKE '%timeout_s%'"
    )
    low, high = TIMEOUT_S_BOUNDS
    assert len(checks) == 2
    for check in checks:
        assert f">= {low}" in check["def"], check["def"]
        assert f"<= {high}" in check["def"], check["def"]
    for schema in ("Endpoint", "EndpointCreate", "EndpointUpdate"):
        timeout = SCHEMAS[schema]["properties"]["timeout_s"]
        assert (timeout["minimum"], timeout["maximum"]) == TIMEOUT_S_BOUNDS, schema
    for schema in ("EndpointCreate", "EndpointUpdate"):
        assert SCHEMAS[schema]["properties"]["retry_schedule"]["maxItems"] == MAX_RETRY_DELAYS
