"""Bad input to ``webhooks.emit`` and the endpoint functions, in SQL and through Store, fuzzed with
hypothesis while an engine delivers: every rejection names the problem, nothing is half-written,
accepted input is stored and delivered exactly as given, and a canary keeps arriving throughout.

The examples run on their own event loop in a worker thread (:func:`run_examples`), so the
engine and the receiver on the test's loop work on while the database is being abused.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
from collections import Counter
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any
from uuid import UUID

import asyncpg
from hypothesis import strategies as st

from engine.db.store import Store
from engine.delivery.housekeeping import wait_first
from engine.errors import EngineError
from engine.models import EndpointOptions
from tests.support.badinput import (
    INJECTIONS,
    KNOWN_PREFIXES,
    KNOWN_TYPES,
    VALID_TEXT,
    WRONG_TYPES,
    Arg,
    Field,
    bad,
    calls,
    check_verdict,
    event_type_arg,
    for_account,
    key_field,
    ok,
    one_at_a_time,
    payload_field,
    payload_variants,
    run_examples,
    text_arg,
    text_field,
    text_variants,
    unsure,
)
from tests.support.engines import RunningEngine, create_endpoint
from tests.support.load import emit_many
from tests.support.receiver import Receiver

StartEngine = Callable[..., Awaitable[RunningEngine]]

ACCOUNT = "fuzz"  # the one account with an endpoint (on the receiver); others have none
CANARY = "canary"
EXAMPLES = 150
# Hosts under .invalid never resolve: an endpoint the fuzz creates cannot reach the network.
VALID_URLS = (
    "https://hooks.example.invalid/h",
    "https://a.example.invalid:8443/x/y?z=1#f",
    "http://hooks.example.invalid/",  # http: the fuzz runs with allow_http on
    "https://[::1]:9/h",
    "https://user@hooks.example.invalid/h",
)
BAD_URLS = (
    "",
    "not a url",
    "ftp://hooks.example.invalid/",
    "javascript:alert(1)",
    "https://",
    "https:///path",
    "https://exa mple.invalid/",
    "https://hooks.example.invalid:0/",
    "https://hooks.example.invalid:65536/",
    "https://hooks.example.invalid:99999/",
    "//hooks.example.invalid/",
    "https://-bad.invalid/",
    "https://hooks.example.invalid/\n",
    "https://[::1/",
    "https://user@/x",
    "https://hooks.example.invalid/" + "x" * 2100,
)


def account_field() -> Field:
    """ACCOUNT (subscribed) half the time, other valid accounts (nobody subscribes), or bad."""
    valid = st.one_of(
        st.just(ACCOUNT), VALID_TEXT.filter(lambda t: t.strip(" ") != "" and t != CANARY)
    )
    anything = text_arg("account_id", max_chars=200).filter(lambda a: a.value != CANARY)
    return Field(valid.map(ok), anything)


def url_arg() -> st.SearchStrategy[Arg]:
    return st.one_of(
        st.sampled_from(VALID_URLS).map(ok),
        st.sampled_from(BAD_URLS).map(lambda u: bad(u, "url")),
        st.builds(lambda inj: f"https://{inj}.example.invalid/", st.sampled_from(INJECTIONS)).map(
            lambda u: unsure(u, "url")
        ),
        st.text(max_size=60).map(lambda u: unsure(u, "url", "nul")),
        st.builds(
            lambda a, b: f"https://hooks.example.invalid/{a}\x00{b}",
            st.text(max_size=3),
            st.text(max_size=3),
        ).map(lambda u: bad(u, "url", "nul")),
        WRONG_TYPES.map(lambda v: bad(v, "type")),
    )


def event_types_arg() -> st.SearchStrategy[Arg]:
    valid = st.sampled_from([*KNOWN_TYPES, "*", *(f"{p}.*" for p in KNOWN_PREFIXES)])
    return st.one_of(
        st.lists(valid, min_size=1, max_size=4).map(ok),
        st.just(bad([], "event_types")),
        st.lists(valid, max_size=2).map(lambda v: bad([*v, None], "event_types")),
        st.lists(event_type_arg("event_types"), min_size=1, max_size=3).map(_types_of),
        st.sampled_from(["nope.*", "*.*", "email.%", "%.*", "_mail.*"]).map(
            lambda t: bad(["email.sent", t], "event_types")
        ),
        # A string, not a list: Store's list() splits it into one-letter types.
        st.sampled_from(KNOWN_TYPES).map(lambda t: bad(t, "type", "event_types")),
        st.lists(st.integers(), min_size=1, max_size=2).map(lambda v: bad(v, "type")),
    )


def _types_of(items: list[Arg]) -> Arg:
    """A list of emit-style event types, judged as a subscription list (wildcards allowed)."""
    values = [a.value for a in items]

    def subscribable(v: Any) -> bool:
        if v in KNOWN_TYPES or v == "*":
            return True
        return isinstance(v, str) and v.endswith(".*") and v[:-2] in KNOWN_PREFIXES

    if all(subscribable(v) for v in values):
        return ok(values)
    tokens = {t for a in items for t in a.tokens} - {"event_type"}
    return bad(values, "event_types", *tokens)


def _encoded_secret(n: int) -> str:
    """``whsec_`` and base64 of ``n`` random bytes."""
    return "whsec_" + base64.b64encode(os.urandom(n)).decode()


def secret_arg() -> st.SearchStrategy[Arg]:
    return st.one_of(
        st.none().map(ok),
        st.integers(24, 64).map(lambda n: ok(_encoded_secret(n))),
        st.sampled_from([1, 16, 23, 65, 200]).map(lambda n: bad(_encoded_secret(n), "secret")),
        st.sampled_from(["", "whsec_", "whsec_!!!!", "sk_live_abc", "whsec_YWJj=x"]).map(
            lambda s: bad(s, "secret")
        ),
        st.text(max_size=40).map(lambda s: unsure(s, "secret", "nul")),
    )


def int_arg(field: str, low: int, high: int, *, none_ok: bool) -> st.SearchStrategy[Arg]:
    def judge(n: int) -> Arg:
        if not -(2**31) <= n < 2**31:
            return bad(n, "type")
        return ok(n) if low <= n <= high else bad(n, field)

    return st.one_of(
        st.integers(low, high).map(ok),
        st.integers(-(2**40), 2**40).map(judge),
        st.sampled_from([low - 1, high + 1, 0, -1]).map(judge),
        st.none().map(lambda v: ok(v) if none_ok else bad(v, field)),
        st.text(max_size=3).map(lambda v: bad(v, "type")),
    )


def ordering_arg() -> st.SearchStrategy[Arg]:
    return st.one_of(
        st.sampled_from(["dispatch", "strict", None]).map(ok),
        text_arg("ordering", max_chars=10).map(
            lambda a: a if a.tokens else bad(a.value, "ordering")
        ),
    )


def rate_arg() -> st.SearchStrategy[Arg]:
    return st.one_of(
        st.one_of(st.none(), st.just(0.0), st.floats(0.001, 1e6)).map(ok),
        st.one_of(
            st.floats(max_value=-1e-9),
            st.sampled_from([float("nan"), float("inf"), float("-inf")]),
        ).map(lambda v: bad(v, "rate_limit_per_s")),
        st.text(max_size=3).map(lambda v: bad(v, "type")),
    )


def emit_args(*, as_text: bool) -> st.SearchStrategy[dict[str, Arg]]:
    return calls(
        {
            "account_id": account_field(),
            "event_type": Field(st.sampled_from(KNOWN_TYPES).map(ok), event_type_arg()),
            "payload": payload_field(as_text=as_text),
            "idempotency_key": key_field(),
        }
    )


def endpoint_args(*, updating: bool) -> st.SearchStrategy[dict[str, Arg]]:
    """Arguments of create_endpoint, or of update_endpoint (where None leaves a field alone)."""
    subscribable = st.sampled_from([*KNOWN_TYPES, "*", *(f"{p}.*" for p in KNOWN_PREFIXES)])
    fields = {
        "url": Field(st.sampled_from(VALID_URLS).map(ok), url_arg()),
        "event_types": Field(
            st.lists(subscribable, min_size=1, max_size=4).map(ok), event_types_arg()
        ),
        "description": text_field("description", max_chars=1000, empty_ok=True),
        "max_in_flight": Field(
            st.one_of(st.none(), st.integers(1, 256)).map(ok),
            int_arg("max_in_flight", 1, 256, none_ok=True),
        ),
        "ordering": Field(st.sampled_from(["dispatch", "strict", None]).map(ok), ordering_arg()),
        "rate_limit_per_s": Field(
            st.one_of(st.none(), st.just(0.0), st.floats(0.001, 1e6)).map(ok), rate_arg()
        ),
    }
    if updating:
        unchanged = st.just(ok(None))
        return calls(
            {
                name: Field(st.one_of(unchanged, f.valid), st.one_of(unchanged, f.anything))
                for name, f in fields.items()
            }
        )
    secrets = st.one_of(st.none(), st.integers(24, 64).map(_encoded_secret))
    return calls(
        {
            "account_id": account_field(),
            **fields,
            "secret": Field(secrets.map(ok), secret_arg()),
        }
    )


@dataclass
class Session:
    """One worker thread's connections and what its examples left behind."""

    conn: asyncpg.Connection
    pool: asyncpg.Pool
    store: Store
    endpoint_id: UUID  # ACCOUNT's endpoint, on the receiver
    canary_id: UUID
    accepted: dict[int, Any] = field(default_factory=dict)  # event id -> payload
    tally: Counter[str] = field(default_factory=Counter)  # "accepted" or the refusal's token

    def verdict(self, args: dict[str, Arg], exc: BaseException | None) -> None:
        self.tally[check_verdict(args, exc)] += 1

    async def snapshot(self) -> tuple[int, ...]:
        """Row counts an example may change (the canary's rows excluded). The running engine
        moves accepted events from the intake into events and deliveries (ACCOUNT's one endpoint
        takes every event) in one transaction, so the sums are the same before and after it."""
        row = await self.conn.fetchrow(
            "SELECT (SELECT count(*) FROM webhooks.events WHERE account_id <> $1)"
            " + (SELECT count(*) FROM webhooks.intake WHERE account_id <> $1),"
            " (SELECT count(*) FROM webhooks.endpoints),"
            " (SELECT count(*) FROM webhooks.idempotency_keys),"
            " (SELECT count(*) FROM webhooks.deliveries WHERE endpoint_id <> $2)"
            " + (SELECT count(*) FROM webhooks.delivery_outcomes WHERE endpoint_id <> $2)"
            " + (SELECT count(*) FROM webhooks.intake WHERE account_id <> $1)",
            CANARY,
            self.canary_id,
        )
        assert row is not None
        return tuple(row)

    async def endpoint_row(self) -> asyncpg.Record | None:
        return await self.conn.fetchrow(
            "SELECT * FROM webhooks.endpoints WHERE id = $1", self.endpoint_id
        )

    async def check_emitted(
        self, args: dict[str, Arg], event_id: int | None, before: tuple[int, ...], payload: Any
    ) -> None:
        """An accepted emit wrote one event and one delivery, as given (or nothing, when nobody
        subscribes or the idempotency key was used before)."""
        after = await self.snapshot()
        account, key = args["account_id"].value, args["idempotency_key"].value
        assert (event_id is None) == (account != ACCOUNT)
        if event_id is None or (key is not None and after == before):
            assert after == before
            return
        grew = 1 if key is not None else 0
        assert after == (before[0] + 1, before[1], before[2] + grew, before[3] + 1)
        row = await self.conn.fetchrow(  # fanned out or not yet, in one snapshot
            "SELECT account_id, type, payload::text, idempotency_key FROM webhooks.events"
            " WHERE id = $1"
            " UNION ALL SELECT account_id, type, payload::text, idempotency_key"
            " FROM webhooks.intake WHERE id = $1",
            event_id,
        )
        assert row is not None
        assert (row["account_id"], row["type"], row["idempotency_key"]) == (
            account,
            args["event_type"].value,
            key,
        )
        assert json.loads(row["payload"]) == payload
        self.accepted[event_id] = payload


async def open_session(db_url: str, endpoint_id: UUID, canary_id: UUID) -> Session:
    conn = await asyncpg.connect(db_url)
    pool = await asyncpg.create_pool(db_url, min_size=1, max_size=2)
    return Session(conn, pool, Store(pool), endpoint_id, canary_id)


async def close_session(session: Session) -> None:
    await session.pool.close()
    await session.conn.close()


async def check_emit_sql(s: Session, args: dict[str, Arg]) -> None:
    args = for_account(args, subscribed=args["account_id"].value == ACCOUNT)
    before = await s.snapshot()
    try:
        event_id = await s.conn.fetchval(
            "SELECT webhooks.emit($1::text, $2::text, $3::jsonb, $4::text)",
            *(
                args[name].value
                for name in ("account_id", "event_type", "payload", "idempotency_key")
            ),
        )
    except asyncpg.PostgresError as exc:
        s.verdict(args, exc)
        assert await s.snapshot() == before, "a refused emit wrote something"
        return
    s.verdict(args, None)
    # Parsed only when stored: without a subscriber emit accepts nesting of any depth (it checks
    # depth only when it stores), deeper than Python's json module can parse.
    payload = json.loads(args["payload"].value) if event_id is not None else None
    await s.check_emitted(args, event_id, before, payload)


async def check_emit_store(s: Session, args: dict[str, Arg]) -> None:
    args = for_account(args, subscribed=args["account_id"].value == ACCOUNT)
    before = await s.snapshot()
    values = {name: a.value for name, a in args.items()}
    try:
        event_id = await s.store.emit(**values)
    except (EngineError, asyncpg.PostgresError) as exc:
        s.verdict(args, exc)
        assert await s.snapshot() == before, "a refused emit wrote something"
        return
    s.verdict(args, None)
    await s.check_emitted(args, event_id, before, values["payload"])


async def check_endpoint_sql(s: Session, call: tuple[str, dict[str, Arg]]) -> None:
    kind, args = call
    before, row_before = await s.snapshot(), await s.endpoint_row()
    v = {name: a.value for name, a in args.items()}
    try:
        if kind == "create":
            result = await s.conn.fetchrow(
                "SELECT * FROM webhooks.create_endpoint($1::text, $2::text, $3::text[], $4::text,"
                " $5::text, $6::integer, $7::text, $8::double precision)",
                v["account_id"],
                v["url"],
                v["event_types"],
                v["description"],
                v["secret"],
                v["max_in_flight"],
                v["ordering"],
                v["rate_limit_per_s"],
            )
        else:
            result = await s.conn.fetchrow(
                "SELECT * FROM webhooks.update_endpoint($1::uuid, $2::text, $3::text[], $4::text,"
                " $5::integer, $6::text, $7::double precision)",
                s.endpoint_id,
                v["url"],
                v["event_types"],
                v["description"],
                v["max_in_flight"],
                v["ordering"],
                v["rate_limit_per_s"],
            )
    except asyncpg.PostgresError as exc:
        s.verdict(args, exc)
        assert await s.snapshot() == before, f"a refused {kind} wrote something"
        assert await s.endpoint_row() == row_before, f"a refused {kind} changed the endpoint"
        return
    s.verdict(args, None)
    assert result is not None
    await check_endpoint_row(s, kind, args, before, result["id"])


async def check_endpoint_row(
    s: Session, kind: str, args: dict[str, Arg], before: tuple[int, ...], endpoint_id: UUID
) -> None:
    """An accepted create or update stored every given field exactly as given."""
    after = await s.snapshot()
    assert after == (before[0], before[1] + (kind == "create"), *before[2:])
    row = await s.conn.fetchrow("SELECT * FROM webhooks.endpoints WHERE id = $1", endpoint_id)
    assert row is not None
    for name, arg in args.items():
        if arg.value is None:
            continue
        stored = row[name]
        if name == "event_types":
            assert sorted(stored) == sorted(set(arg.value))
        elif name == "rate_limit_per_s":
            assert stored == (arg.value or None)
        else:
            assert stored == arg.value, name


# Store-only operations on ACCOUNT's endpoint: (name, arguments).
def store_calls() -> st.SearchStrategy[tuple[str, dict[str, Arg]]]:
    past = st.integers(0, 10**6).map(lambda s: ok(datetime.now(UTC) - timedelta(seconds=s)))
    since = Field(
        past,
        st.one_of(
            past,
            st.integers(3600, 10**8).map(
                lambda s: bad(datetime.now(UTC) + timedelta(seconds=s), "since")
            ),
        ),
    )
    fine_grace = st.integers(0, 30 * 86400).map(lambda s: ok(timedelta(seconds=s)))
    grace = Field(
        fine_grace,
        st.one_of(
            fine_grace,
            st.integers(1, 10**8).map(lambda s: bad(timedelta(seconds=-s), "grace")),
            st.integers(30 * 86400 + 1, 10**9).map(lambda s: bad(timedelta(seconds=s), "grace")),
        ),
    )
    unknown = st.integers(10**9, 2**63 - 1).map(lambda n: bad(n, "delivery_id"))
    delivery = Field(
        unknown,
        st.one_of(
            unknown,
            st.integers(-(2**63), 0).map(lambda n: bad(n, "delivery_id")),
            st.integers(2**63, 2**70).map(lambda n: bad(n, "type")),
        ),
    )
    secret = Field(
        st.one_of(st.none(), st.integers(24, 64).map(_encoded_secret)).map(ok), secret_arg()
    )
    return st.one_of(
        endpoint_args(updating=False).map(lambda a: ("create", a)),
        endpoint_args(updating=True).map(lambda a: ("update", a)),
        calls({"grace": grace, "new_secret": secret}).map(lambda a: ("rotate_secret", a)),
        calls({"reason": text_field("reason", max_chars=10**6, empty_ok=True)}).map(
            lambda a: ("disable_endpoint", a)
        ),
        calls({"since": since}).map(lambda a: ("recover", a)),
        calls({"delivery_id": delivery}).map(lambda a: ("redeliver", a)),
    )


async def check_store_call(s: Session, call: tuple[str, dict[str, Arg]]) -> None:
    kind, args = call
    values = {name: a.value for name, a in args.items()}
    before, row_before = await s.snapshot(), await s.endpoint_row()
    created = s.endpoint_id
    try:
        if kind == "create":
            account, url = values.pop("account_id"), values.pop("url")
            secret = values.pop("secret")
            created, _ = await s.store.create_endpoint(
                account, url, EndpointOptions(**values), secret=secret
            )
        elif kind == "update":
            url = values.pop("url")
            await s.store.update_endpoint(s.endpoint_id, EndpointOptions(**values), url=url)
        elif kind == "redeliver":
            await s.store.redeliver(values["delivery_id"])
        else:
            await getattr(s.store, kind)(s.endpoint_id, **values)
    except (EngineError, asyncpg.PostgresError) as exc:
        s.verdict(args, exc)
        assert await s.snapshot() == before, f"a refused {kind} wrote something"
        assert await s.endpoint_row() == row_before, f"a refused {kind} changed the endpoint"
        return
    s.verdict(args, None)
    if kind in ("create", "update"):
        await check_endpoint_row(s, kind, args, before, created)
    elif kind == "disable_endpoint":
        await s.store.enable_endpoint(s.endpoint_id)  # keep the endpoint usable for the next


async def fuzz_while_delivering(
    db_url: str,
    conn: asyncpg.Connection,
    receiver: Receiver,
    start_engine: StartEngine,
    check: Callable[[Session, Any], Coroutine[Any, Any, None]],
    strategy: st.SearchStrategy[Any],
    explicit: list[Any],
) -> Session:
    """Run the examples in a worker thread while canary events are emitted and delivered here.

    Returns the session (its ``accepted`` events) once every canary has arrived.
    """
    endpoint_id, _ = await create_endpoint(conn, receiver.url("/fuzz"), account=ACCOUNT)
    canary_id, _ = await create_endpoint(conn, receiver.url("/canary"), account=CANARY)
    await start_engine()
    stop = asyncio.Event()
    canaries: list[int] = []

    async def emit_canaries() -> None:
        while not stop.is_set():
            canaries.extend(await emit_many(conn, CANARY, 1))
            await wait_first(stop, seconds=0.1)

    emitting = asyncio.get_running_loop().create_task(emit_canaries())
    sessions: list[Session] = []

    async def opened() -> Session:
        sessions.append(await open_session(db_url, endpoint_id, canary_id))
        return sessions[0]

    try:
        await asyncio.to_thread(
            run_examples,
            opened,
            close_session,
            check,
            strategy,
            examples=EXAMPLES,
            explicit=explicit,
        )
    finally:
        stop.set()
        await emitting
    during = len(receiver.received_on("/canary"))
    canaries.extend(await emit_many(conn, CANARY, 1))
    arrived = await receiver.wait_for(len(canaries), path="/canary", timeout_s=30)
    assert {r.headers["webhook-id"] for r in arrived} >= {f"evt_{i}" for i in canaries}
    assert during > 0, "canaries were delivered while the fuzz ran"
    session = sessions[0]
    print(f"{sum(session.tally.values())} calls: {dict(session.tally)}; {len(canaries)} canaries")
    return session


async def check_delivered_intact(receiver: Receiver, accepted: dict[int, Any]) -> None:
    """Every accepted fuzz event reached ACCOUNT's endpoint with its payload unchanged."""
    arrived = await receiver.wait_for(len(accepted), path="/fuzz", timeout_s=30)
    bodies = {json.loads(r.body)["id"]: json.loads(r.body)["data"] for r in arrived}
    for event_id, payload in accepted.items():
        assert bodies[f"evt_{event_id}"] == payload


def emit_cases(*, as_text: bool) -> list[dict[str, Arg]]:
    """Every kind of bad emit argument once, one field at a time."""
    base = {
        "account_id": ok(ACCOUNT),
        "event_type": ok("email.sent"),
        "payload": ok(json.dumps({"n": 1}) if as_text else {"n": 1}),
        "idempotency_key": ok(None),
    }
    types = ["*", "email.*", "EMAIL.SENT", "nope.nope", "email.sent ", *INJECTIONS]
    return one_at_a_time(
        base,
        {
            "account_id": [*text_variants("account_id", max_chars=200), bad(None, "account_id")],
            "event_type": [
                *(bad(t, "event_type") for t in types),
                bad(None, "event_type"),
                bad("email.sent\x00", "nul", "event_type"),
                bad("\udc00", "encoding", "event_type"),
                bad(5, "type"),
            ],
            "payload": payload_variants(as_text=as_text),
            "idempotency_key": [
                *text_variants("idempotency_key", max_chars=255, empty_ok=True),
                bad("", "idempotency_key"),
            ],
        },
    )


def endpoint_cases(*, updating: bool) -> list[dict[str, Arg]]:
    """Every kind of bad create_endpoint (or update_endpoint) argument once."""
    fields: dict[str, list[Arg]] = {
        "url": [
            *(bad(u, "url") for u in BAD_URLS),
            bad("https://hooks.example.invalid/a\x00", "url", "nul"),
            bad(5, "type"),
            *(ok(u) for u in VALID_URLS),
        ],
        "event_types": [
            bad([], "event_types"),
            bad(["email.sent", None], "event_types"),
            *(bad([t], "event_types") for t in ["nope.*", "*.*", "email.%", "%.*", "_mail.*"]),
            *(bad([t], "event_types") for t in INJECTIONS),
            bad(["email.sent\x00"], "nul", "event_types"),
            bad([1], "type"),
            ok(["email.*", "*", "contact.created", "email.*"]),
        ],
        "description": text_variants("description", max_chars=1000, empty_ok=True),
        "max_in_flight": [
            *(bad(n, "max_in_flight") for n in (0, -1, 257, 10**6)),
            bad(2**40, "type"),
            bad("8", "type"),
        ],
        "ordering": [
            *(bad(o, "ordering") for o in ("fifo", "", "STRICT", *INJECTIONS)),
            bad("strict\x00", "nul", "ordering"),
        ],
        "rate_limit_per_s": [
            *(bad(r, "rate_limit_per_s") for r in (-1.0, float("nan"), float("inf"))),
            bad("1", "type"),
        ],
    }
    if updating:
        return one_at_a_time(dict.fromkeys(fields, ok(None)), fields)
    base = {
        "account_id": ok(ACCOUNT),
        "url": ok(VALID_URLS[0]),
        "event_types": ok(["*"]),
        "description": ok(""),
        "max_in_flight": ok(None),
        "ordering": ok(None),
        "rate_limit_per_s": ok(None),
        "secret": ok(None),
    }
    secrets = [
        *(bad(_encoded_secret(n), "secret") for n in (1, 23, 65)),
        *(bad(x, "secret") for x in ("", "whsec_", "whsec_!!!!", "sk_live_abc", *INJECTIONS)),
        bad("whsec_\x00", "nul", "secret"),
        ok(_encoded_secret(32)),
    ]
    variants = {
        "account_id": [*text_variants("account_id", max_chars=200), bad(None, "account_id")],
        **fields,
        "secret": secrets,
    }
    variants["url"].append(bad(None, "url"))
    variants["event_types"].append(bad(None, "event_types"))
    return one_at_a_time(base, variants)


def store_cases() -> list[tuple[str, dict[str, Arg]]]:
    """Every kind of bad argument of Store's endpoint operations once."""
    creates = [
        c
        for c in endpoint_cases(updating=False)
        # Store's signature takes a list; a missing one is a type error the caller's mypy sees.
        if c["event_types"].value is not None
    ]
    now = datetime.now(UTC)
    return [
        *(("create", c) for c in creates),
        *(("update", c) for c in endpoint_cases(updating=True)),
        *(
            ("rotate_secret", {"grace": g, "new_secret": ok(None)})
            for g in (bad(timedelta(seconds=-1), "grace"), bad(timedelta(days=31), "grace"))
        ),
        ("rotate_secret", {"grace": ok(timedelta(0)), "new_secret": bad("whsec_x", "secret")}),
        *(
            ("disable_endpoint", {"reason": r})
            for r in text_variants("reason", max_chars=10**6, empty_ok=True)
        ),
        ("recover", {"since": bad(now + timedelta(days=1), "since")}),
        ("recover", {"since": ok(now - timedelta(days=1))}),
        *(
            ("redeliver", {"delivery_id": d})
            for d in (bad(10**12, "delivery_id"), bad(0, "delivery_id"), bad(2**63, "type"))
        ),
    ]


async def test_emit_in_sql_refuses_bad_input_cleanly(
    db_url: str,
    conn: asyncpg.Connection,
    receiver: Receiver,
    open_policy: None,
    start_engine: StartEngine,
) -> None:
    """webhooks.emit refuses wrong types, bad text, bad JSON, oversized or too deeply nested
    payloads and unknown types, naming the problem and writing nothing, while the engine
    delivers; what it accepts is stored and delivered exactly as given."""
    session = await fuzz_while_delivering(
        db_url,
        conn,
        receiver,
        start_engine,
        check_emit_sql,
        emit_args(as_text=True),
        emit_cases(as_text=True),
    )
    await check_delivered_intact(receiver, session.accepted)


async def test_emit_through_store_refuses_bad_input_cleanly(
    db_url: str,
    conn: asyncpg.Connection,
    receiver: Receiver,
    open_policy: None,
    start_engine: StartEngine,
) -> None:
    """Store.emit (what the admin API and CLI call) turns every bad argument, unencodable payloads
    included, into an error naming the field, and writes nothing."""
    session = await fuzz_while_delivering(
        db_url,
        conn,
        receiver,
        start_engine,
        check_emit_store,
        emit_args(as_text=False),
        emit_cases(as_text=False),
    )
    await check_delivered_intact(receiver, session.accepted)


async def test_endpoint_functions_in_sql_refuse_bad_input_cleanly(
    db_url: str,
    conn: asyncpg.Connection,
    receiver: Receiver,
    open_policy: None,
    start_engine: StartEngine,
) -> None:
    """create_endpoint and update_endpoint refuse bad URLs, event types, secrets, options and
    text with an error naming the field, change nothing when they refuse, and store exactly what
    they accept, while the engine delivers."""
    calls = st.one_of(
        endpoint_args(updating=False).map(lambda a: ("create", a)),
        endpoint_args(updating=True).map(lambda a: ("update", a)),
    )
    explicit = [
        *(("create", c) for c in endpoint_cases(updating=False)),
        *(("update", c) for c in endpoint_cases(updating=True)),
    ]
    await fuzz_while_delivering(
        db_url, conn, receiver, start_engine, check_endpoint_sql, calls, explicit
    )


async def test_endpoint_operations_through_store_refuse_bad_input_cleanly(
    db_url: str,
    conn: asyncpg.Connection,
    receiver: Receiver,
    open_policy: None,
    start_engine: StartEngine,
) -> None:
    """Store's create, update, rotate, disable, recover and redeliver refuse bad arguments with an
    error naming the field and change nothing, while the engine delivers."""
    await fuzz_while_delivering(
        db_url, conn, receiver, start_engine, check_store_call, store_calls(), store_cases()
    )
    assert (
        await conn.fetchval("SELECT count(*) FROM pg_tables WHERE schemaname = 'webhooks'") > 5
    ), "the injections dropped no table"
