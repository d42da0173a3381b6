"""The release before migration 0008 (the per-endpoint policy), for upgrade tests.

Its function files are ``tests/integration/sql_before_0008/`` (the ones 0008 changed, as they were
in main before it). Its engine made the same calls by name as this one except where 0008 changed
them: it claimed through ``claim_v1`` (which 0008 kept as it was) and passed no policy when it
created or updated endpoints or read the settings. :func:`store_before_0008` is a Store making
those calls, so that today's Python can stand in for that engine against either schema. The
claim's two policy columns, which that engine did not read, come back as constants.
"""

from __future__ import annotations

from pathlib import Path

import asyncpg

from engine.db.store import Store

FUNCTIONS_BEFORE_0008 = Path(__file__).parents[1] / "integration" / "sql_before_0008"

# The calls the release before 0008 made, with the parameters today's Store passes and that release
# did not have accepted and ignored (num_nulls(...) >= 0 holds for any values).
_CALLS_BEFORE_0008 = {
    "claim": "SELECT *, '{}'::text AS headers, 10 AS timeout_s"
    " FROM webhooks.claim_v1($1::uuid[], $2::integer[], $3::integer, $4::integer, $5::uuid)",
    "create_endpoint": "SELECT id, secret FROM webhooks.create_endpoint($1::text, $2::text,"
    " $3::text[], $4::text, $5::text, $6::integer, $7::text, $8::double precision)"
    " WHERE num_nulls($9::jsonb, $10::text, $11::interval[], $12::integer) >= 0",
    "update_endpoint": "SELECT id FROM webhooks.update_endpoint($1::uuid, $2::text, $3::text[],"
    " $4::text, $5::integer, $6::text, $7::double precision)"
    " WHERE num_nulls($8::jsonb, $9::text, $10::interval[], $11::integer, $12::text[]) >= 0",
    "settings": "SELECT allow_http, allow_private_networks, retry_schedule, max_payload_bytes,"
    " retention, lease_duration, 10 AS request_timeout_s, 10 AS longest_timeout_s"
    " FROM webhooks.settings",
}


def store_before_0008(pool: asyncpg.Pool) -> Store:
    """A Store that calls the database as the release before 0008 did."""
    store = Store(pool)
    store._q = {**store._q, **_CALLS_BEFORE_0008}  # the one place calls are swapped
    return store
