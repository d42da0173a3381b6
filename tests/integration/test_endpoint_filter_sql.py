"""An endpoint's payload filter decides which events it gets: emit writes a delivery for an
endpoint exactly when its filter is NULL or Postgres's own ``payload @@ filter`` is true. A
filter that errors on a payload (strict mode on a missing key, a division by zero) does not match
and never fails the app's emit.

hypothesis draws payloads and filters from a small grammar of SQL/JSON path predicates (paths,
comparisons, exists, like_regex, starts with, arithmetic, &&, ||, !, strict mode); the oracle is
``coalesce(payload @@ filter, false)`` evaluated by the same Postgres.
"""

from __future__ import annotations

import asyncio
import itertools
import json
from typing import Any

import asyncpg
from hypothesis import strategies as st

from tests.support.badinput import run_examples
from tests.support.db import fan_out

EXAMPLES = 150
KEYS = ("bounce_type", "campaign_id", "n", "tags", "email", "flag")
_accounts = itertools.count()

scalars = st.one_of(
    st.sampled_from(["hard", "soft", "vip", "a@example.com", "x", ""]),
    st.integers(-3, 50),
    st.sampled_from([0.5, -1.25, 42.0]),
    st.booleans(),
    st.none(),
)
values = st.one_of(scalars, st.lists(scalars, max_size=3))
payloads = st.dictionaries(
    st.sampled_from(KEYS),
    st.one_of(values, st.dictionaries(st.sampled_from(KEYS), values, max_size=2)),
    max_size=5,
)


def _literal(value: Any) -> str:
    return json.dumps(value)


paths = st.one_of(
    st.sampled_from(KEYS).map(lambda k: f"$.{k}"),
    st.tuples(st.sampled_from(KEYS), st.sampled_from(KEYS)).map(lambda p: f"$.{p[0]}.{p[1]}"),
    st.sampled_from(KEYS).map(lambda k: f"$.{k}[*]"),
)
comparisons = st.builds(
    lambda path, op, value: f"{path} {op} {_literal(value)}",
    paths,
    st.sampled_from(["==", "!=", "<", "<=", ">", ">="]),
    scalars,
)
atoms = st.one_of(
    comparisons,
    paths.map(lambda p: f"exists({p})"),
    st.builds(
        lambda p, r: f"{p} like_regex {_literal(r)}", paths, st.sampled_from(["^h", "a", "@"])
    ),
    st.builds(
        lambda p, s: f"{p} starts with {_literal(s)}", paths, st.sampled_from(["h", "v", ""])
    ),
    st.builds(
        lambda p, op, n, v: f"{p} {op} {n} > {v}",
        paths,
        st.sampled_from(["+", "*", "/", "%"]),
        st.integers(0, 2),
        st.integers(-1, 10),
    ),
)
predicates = st.recursive(
    atoms,
    lambda inner: st.one_of(
        st.tuples(inner, inner).map(lambda p: f"({p[0]}) && ({p[1]})"),
        st.tuples(inner, inner).map(lambda p: f"({p[0]}) || ({p[1]})"),
        inner.map(lambda p: f"!({p})"),
        inner.map(lambda p: f"({p}) is unknown"),
    ),
    max_leaves=4,
)
filters = st.one_of(st.none(), predicates, predicates.map(lambda p: f"strict {p}"))


async def _check(conn: asyncpg.Connection, example: tuple[dict[str, Any], str | None]) -> None:
    """One endpoint with the filter, one event with the payload: delivered iff the oracle says."""
    payload, path = example
    account = f"filter_{next(_accounts)}"
    endpoint_id = await conn.fetchval(
        "SELECT id FROM webhooks.create_endpoint($1, 'https://example.com/h', ARRAY['*'],"
        " p_filter => $2::jsonpath)",
        account,
        path,
    )
    expected = path is None or await conn.fetchval(
        "SELECT coalesce($1::jsonb @@ $2::jsonpath, false)", json.dumps(payload), path
    )
    await conn.execute(
        "SELECT webhooks.emit($1, 'email.bounced', $2::jsonb)", account, json.dumps(payload)
    )
    await fan_out(conn)
    delivered = await conn.fetchval(
        "SELECT count(*) FROM webhooks.deliveries WHERE endpoint_id = $1", endpoint_id
    )
    assert delivered == (1 if expected else 0), (payload, path)


async def test_filters_deliver_exactly_what_postgres_matches(db_url: str) -> None:
    """For random payloads and filters, emit delivers to the endpoint exactly when the filter is
    NULL or ``payload @@ filter`` is true; a filter that errors never fails the emit."""

    async def open_session() -> asyncpg.Connection:
        return await asyncpg.connect(db_url)

    async def close_session(conn: asyncpg.Connection) -> None:
        await conn.close()

    await asyncio.to_thread(
        run_examples,
        open_session,
        close_session,
        _check,
        st.tuples(payloads, filters),
        examples=EXAMPLES,
        explicit=[
            ({"bounce_type": "hard"}, '$.bounce_type == "hard"'),
            ({"bounce_type": "soft"}, '$.bounce_type == "hard"'),
            ({}, 'strict $.bounce_type == "hard"'),  # errors: no match, no failure
            ({"n": 1}, "$.n / 0 > 0"),  # errors: no match, no failure
            ({"campaign_id": 42}, "$.campaign_id == 42"),
        ],
    )
