"""Bad input for the public SQL functions and the Store: strategies, an oracle, a runner.

Every generated argument is :class:`Arg`: the value, plus the error tokens that may name it when
it is wrong (empty: the value is valid; ``unsure``: validity is not predicted, as for random URL
text). :func:`error_token` turns whatever a rejection raised into such a token: the field a
project error names (SQLSTATE ``WH0xx`` with its column, or an EngineError's ``field``), or a
word for a clean Postgres or driver error (``nul``, ``json``, ``depth``, ``type``, ``encoding``).

:func:`run_examples` drives hypothesis on a private event loop in a worker thread, so the test's
own loop keeps running the engine and its receiver while the examples run.
"""

from __future__ import annotations

import asyncio
import json
import re
import string
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import asyncpg
import uvloop
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from engine.errors import EngineError

T = TypeVar("T")

KNOWN_TYPES = (
    "email.sent",
    "email.opened",
    "email.clicked",
    "email.bounced",
    "email.unsubscribed",
    "email.spam_complaint",
    "automation.triggered",
    "contact.created",
    "contact.updated",
)
KNOWN_PREFIXES = ("email", "automation", "contact")
MAX_PAYLOAD_BYTES = 262_144
MAX_PAYLOAD_DEPTH = 32  # emit's limit: no item deeper than this below the payload object
INJECTIONS = (
    "'; DROP TABLE webhooks.endpoints; --",
    "x' OR '1'='1",
    '"; DELETE FROM webhooks.events; --',
    "$$; SELECT pg_sleep(5); $$",
    "1; UPDATE webhooks.settings SET allow_private_networks = true",
    "') ; TRUNCATE webhooks.deliveries CASCADE; --",
    "%s%s%s%n%x",
    "\\x00\\u0000",
    "email.%",
    "%.*",
    "_mail.*",
    "email.sent' OR 'a'='a",
    "${jndi:ldap://127.0.0.1/a}",
    "../../etc/passwd",
    "<script>alert(1)</script>",
)
WRONG_TYPES = st.one_of(
    st.integers(), st.floats(), st.booleans(), st.binary(max_size=10), st.lists(st.integers())
)


@dataclass(frozen=True)
class Arg:
    """A generated argument and the error tokens allowed to name it (empty: it is valid)."""

    value: Any
    tokens: frozenset[str] = frozenset()
    unsure: bool = False

    def __repr__(self) -> str:  # hypothesis prints failing examples; keep huge values short
        text = repr(self.value)
        text = text if len(text) < 200 else f"{text[:200]}... ({len(text)} chars)"
        return f"Arg({text}, tokens={sorted(self.tokens)}{', unsure' if self.unsure else ''})"


@dataclass(frozen=True)
class Field:
    """What a field may be: its valid values, and anything at all (valid or not)."""

    valid: st.SearchStrategy[Arg]
    anything: st.SearchStrategy[Arg]


def calls(fields: dict[str, Field], *, most_broken: int = 2) -> st.SearchStrategy[dict[str, Arg]]:
    """Arguments with at most ``most_broken`` fields drawn from ``anything``, the others valid.

    Mostly one bad field at a time, so each refusal is seen on its own, and all-valid calls often
    enough to check what is accepted; hypothesis shrinks a failure toward the fewest bad fields.
    """

    @st.composite
    def draw_call(draw: st.DrawFn) -> dict[str, Arg]:
        broken = draw(st.sets(st.sampled_from(sorted(fields)), max_size=most_broken))
        return {name: draw(f.anything if name in broken else f.valid) for name, f in fields.items()}

    return draw_call()


def bad(value: Any, *tokens: str) -> Arg:
    return Arg(value, frozenset(tokens))


# Marks a payload that webhooks.emit refuses only when it stores the event (size and depth are
# not checked on the no-subscriber path, which must cost one index probe).
STORED_ONLY = "stored_only"


def when_stored(value: Any, *tokens: str) -> Arg:
    """Bad only for an account with a subscriber; see :func:`for_account`."""
    return Arg(value, frozenset({*tokens, STORED_ONLY}))


def for_account(args: dict[str, Arg], subscribed: bool) -> dict[str, Arg]:
    """The arguments as judged for this call: without a subscriber, a STORED_ONLY payload may be
    accepted (nothing is stored) or refused; with one, it must be refused."""
    if subscribed:
        return args
    return {
        name: Arg(a.value, a.tokens, unsure=True) if STORED_ONLY in a.tokens else a
        for name, a in args.items()
    }


def ok(value: Any) -> Arg:
    return Arg(value)


def unsure(value: Any, *tokens: str) -> Arg:
    return Arg(value, frozenset(tokens), unsure=True)


def text_arg(field: str, *, max_chars: int, empty_ok: bool = False) -> st.SearchStrategy[Arg]:
    """Text for a text column: valid text, injections, NUL, lone surrogates, overlong, blank."""

    def judge(text: str) -> Arg:
        if "\x00" in text:
            return bad(text, "nul", field)
        if len(text) > max_chars:
            return bad(text, field)
        if not empty_ok and text.strip(" ") == "":
            return bad(text, field)
        return ok(text)

    overlong = st.text(string.printable, min_size=max_chars + 1, max_size=max_chars + 50)
    return st.one_of(
        st.text(max_size=40).map(judge),
        st.sampled_from(INJECTIONS).map(judge),
        *([overlong.map(judge)] if max_chars < 10_000 else []),
        st.builds(lambda a, b: a + "\x00" + b, st.text(max_size=5), st.text(max_size=5)).map(judge),
        st.text(st.characters(categories=["Cs"]), min_size=1, max_size=3).map(
            lambda t: bad(t, "encoding", field)
        ),
        WRONG_TYPES.map(lambda v: bad(v, "type")),
    )


# A high surrogate followed by a low one: a valid pair once JSON-escaped.
SURROGATE_PAIR = re.compile("[\ud800-\udbff][\udc00-\udfff]")

# Text Postgres can store (no NUL, no lone surrogates), SQL injection attempts included.
VALID_TEXT = st.one_of(
    st.text(st.characters(exclude_categories=["Cs"], exclude_characters="\x00"), max_size=40),
    st.sampled_from(INJECTIONS),
)


def text_field(field: str, *, max_chars: int, empty_ok: bool = False) -> Field:
    valid = VALID_TEXT.filter(lambda t: empty_ok or t.strip(" ") != "")
    return Field(valid.map(ok), text_arg(field, max_chars=max_chars, empty_ok=empty_ok))


def event_type_arg(field: str = "event_type") -> st.SearchStrategy[Arg]:
    """Event types: known ones, wildcards (which emit refuses), near misses and text."""
    return st.one_of(
        st.sampled_from(KNOWN_TYPES).map(ok),
        st.sampled_from(
            ["*", "email.*", "EMAIL.SENT", "email.sent ", " email.sent", "email", "email.sent.x"]
        ).map(lambda t: bad(t, field)),
        text_arg(field, max_chars=100).map(
            lambda a: a if a.tokens else bad(a.value, field)  # random text is no known type
        ),
        st.none().map(lambda v: bad(v, field)),
    )


def nested(depth: int) -> dict[str, Any]:
    """An object with an item ``depth`` levels below it (built without recursion)."""
    inner: Any = 1
    for level in range(depth - 1):
        inner = {"a": inner} if level % 2 else [inner]
    return {"a": inner}


def nested_text(depth: int) -> str:
    """JSON text of an object with an item ``depth`` levels below it."""
    return '{"a":' + "[" * (depth - 1) + "1" + "]" * (depth - 1) + "}"


JSON_SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**70), 2**70),
    st.floats(-1e15, 1e15, allow_nan=False),
    st.text(st.characters(exclude_categories=["Cs"], exclude_characters="\x00"), max_size=30),
)
JSON_OBJECTS = st.dictionaries(
    st.text(max_size=8).filter(lambda k: "\x00" not in k),
    st.recursive(
        JSON_SCALARS,
        lambda inner: st.one_of(
            st.lists(inner, max_size=4),
            st.dictionaries(st.text(string.ascii_letters, max_size=5), inner, max_size=4),
        ),
        max_leaves=20,
    ),
    max_size=6,
)


def payload_arg(*, as_text: bool) -> st.SearchStrategy[Arg]:
    """Payloads: valid objects, non-objects, oversized, nested too deep, NUL, bad JSON text.

    ``as_text``: JSON text for ``$3::jsonb`` (SQL), else Python values for Store.emit.
    """

    def encode(value: Any) -> Any:
        return json.dumps(value) if as_text else value

    common = [
        JSON_OBJECTS.map(lambda v: ok(encode(v))),
        st.one_of(JSON_SCALARS, st.lists(JSON_SCALARS, max_size=3)).map(
            lambda v: bad(encode(v), "payload")
        ),
        st.integers(MAX_PAYLOAD_BYTES + 1, MAX_PAYLOAD_BYTES * 2).map(
            lambda n: when_stored(encode({"big": "x" * n}), "payload")
        ),
        st.integers(1, MAX_PAYLOAD_DEPTH).map(lambda d: ok(encode(nested(d)))),
        st.text(max_size=5).map(lambda t: bad(encode({"nul": t + "\x00"}), "nul", "payload")),
    ]
    if as_text:
        return st.one_of(
            *common,
            st.integers(MAX_PAYLOAD_DEPTH + 1, 5_000).map(
                lambda d: when_stored(nested_text(d), "payload")
            ),
            st.just(bad(nested_text(200_000), "payload", "depth")),
            st.sampled_from(['{"a":', "{'a': 1}", "", "{} {}", '{"a": NaN}', "[1,]"]).map(
                lambda t: bad(t, "json")
            ),
            st.sampled_from(['{"a": "\\ud800"}', '{"a": "\\udc00x"}']).map(
                lambda t: bad(t, "json")
            ),
            WRONG_TYPES.map(lambda v: bad(v, "type")),
            st.none().map(lambda v: bad(v, "payload")),
        )
    return st.one_of(
        *common,
        st.integers(MAX_PAYLOAD_DEPTH + 1, 5_000).map(lambda d: when_stored(nested(d), "payload")),
        st.sampled_from([float("nan"), float("inf")]).map(lambda f: bad({"f": f}, "payload")),
        st.just(bad({"set": {1, 2}}, "payload")),
        st.just(bad({"bytes": b"\xff"}, "payload")),
        # Lone surrogates only: JSON escapes a high surrogate followed by a low one as
        # "\\ud800\\udc00", which is one valid character (U+10000), so Postgres rightly takes it.
        st.text(st.characters(categories=["Cs"]), min_size=1, max_size=2)
        .filter(lambda t: not SURROGATE_PAIR.search(t))
        .map(lambda t: bad({"s": t}, "payload")),
    )


def payload_field(*, as_text: bool) -> Field:
    valid = st.one_of(JSON_OBJECTS, st.integers(1, MAX_PAYLOAD_DEPTH).map(nested))
    return Field(
        valid.map(lambda v: ok(json.dumps(v) if as_text else v)), payload_arg(as_text=as_text)
    )


def key_field() -> Field:
    valid = st.one_of(st.none(), VALID_TEXT.filter(lambda t: t != ""))
    return Field(valid.map(ok), key_arg())


def key_arg() -> st.SearchStrategy[Arg]:
    """Idempotency keys: none, valid, empty, overlong, NUL, injections."""

    def judge(a: Arg) -> Arg:
        if a.tokens or not isinstance(a.value, str):
            return a
        return bad(a.value, "idempotency_key") if a.value == "" else ok(a.value)

    return st.one_of(
        st.none().map(ok),
        text_arg("idempotency_key", max_chars=255, empty_ok=True).map(judge),
    )


def error_token(exc: BaseException) -> str:
    """The field or kind of problem a rejection names; fails the test if it names none."""
    if isinstance(exc, EngineError):
        assert exc.field, f"{type(exc).__name__} without a field: {exc}"
        assert str(exc).startswith(exc.field), f"the message does not lead with the field: {exc}"
        return exc.field
    assert isinstance(exc, asyncpg.PostgresError), f"not a clean rejection: {exc!r}"
    sqlstate = exc.sqlstate or ""
    message = str(exc)
    if sqlstate.startswith("WH"):
        column = getattr(exc, "column_name", None)
        assert column, f"{sqlstate} without a column: {message}"
        assert message.startswith(column + ":"), f"the message does not lead with {column}"
        return str(column)
    tokens = {
        "22021": "nul",  # invalid byte sequence for encoding "UTF8": 0x00
        "22P05": "nul",  # JSON \u0000 cannot be converted to text
        "22P02": "json",  # invalid input syntax for type json
        "54001": "depth",  # stack depth limit exceeded while parsing JSON
    }
    if sqlstate in tokens:
        return tokens[sqlstate]
    # asyncpg refused to encode an argument, naming it: "invalid input for query argument $N".
    assert isinstance(exc, asyncpg.DataError), f"unexpected database error: {exc!r}"
    assert "query argument $" in message, message
    return "encoding" if "codec can't encode" in message else "type"


def check_verdict(args: dict[str, Arg], exc: BaseException | None) -> str:
    """A call with only valid arguments succeeds; one with a known-bad argument is refused by an
    error naming one of the bad arguments (or a clean error one of them allows).

    Returns ``accepted`` or the token of the refusal, for the test's tally.
    """
    known_bad = {name: a for name, a in args.items() if a.tokens and not a.unsure}
    may_fail = any(a.unsure for a in args.values())
    if exc is None:
        assert not known_bad, f"accepted although {sorted(known_bad)} are invalid"
        return "accepted"
    token = error_token(exc)
    allowed = {t for a in args.values() for t in a.tokens}
    assert known_bad or may_fail, f"valid input refused: {exc!r}"
    assert token in allowed, f"the error names {token!r}, expected one of {sorted(allowed)}"
    return token


def one_at_a_time(base: dict[str, Arg], variants: dict[str, list[Arg]]) -> list[dict[str, Arg]]:
    """``base``, then a copy of it per variant with only that variant's field replaced: every
    kind of bad value is tried at least once, whatever hypothesis draws."""
    return [base] + [{**base, name: arg} for name, args in variants.items() for arg in args]


def text_variants(field: str, *, max_chars: int, empty_ok: bool = False) -> list[Arg]:
    """One value of each kind :func:`text_arg` draws, injections included (valid text)."""
    variants = [
        bad("a\x00b", "nul", field),
        bad("\ud800", "encoding", field),
        bad(5, "type"),
        bad(["a"], "type"),
        *([bad("a" * (max_chars + 1), field)] if max_chars < 10_000 else []),
        *(ok(text) for text in INJECTIONS),
    ]
    if not empty_ok:
        variants += [bad("", field), bad("   ", field)]
    return variants


def payload_variants(*, as_text: bool) -> list[Arg]:
    """One payload of each kind :func:`payload_arg` draws."""

    def encode(value: Any) -> Any:
        return json.dumps(value) if as_text else value

    variants = [
        bad(encode([1, 2]), "payload"),
        bad(encode("text"), "payload"),
        bad(encode(None), "payload"),
        when_stored(encode({"big": "x" * (MAX_PAYLOAD_BYTES + 1)}), "payload"),
        ok(encode(nested(MAX_PAYLOAD_DEPTH))),
        when_stored(encode(nested(MAX_PAYLOAD_DEPTH + 1)), "payload"),
        bad(encode({"nul": "a\x00b"}), "nul", "payload"),
        ok(encode({inj: inj for inj in INJECTIONS})),
    ]
    if as_text:
        return [
            *variants,
            bad(nested_text(3_000), "payload"),
            bad(nested_text(200_000), "payload", "depth"),
            bad('{"a": "\\ud800"}', "json"),
            bad('{"a": NaN}', "json"),
            bad("{'a': 1}", "json"),
            bad("", "json"),
            bad(5, "type"),
        ]
    return [
        *variants,
        bad(nested(3_000), "payload"),
        bad({"f": float("nan")}, "payload"),
        bad({"f": float("inf")}, "payload"),
        bad({"set": {1, 2}}, "payload"),
        bad({"bytes": b"\xff"}, "payload"),
        bad({"s": "\ud800"}, "payload"),
    ]


def run_examples(
    open_session: Callable[[], Coroutine[Any, Any, T]],
    close_session: Callable[[T], Coroutine[Any, Any, None]],
    check: Callable[[T, Any], Coroutine[Any, Any, None]],
    strategy: st.SearchStrategy[Any],
    *,
    examples: int,
    explicit: Sequence[Any] = (),
) -> None:
    """Run ``check(session, value)`` for each ``explicit`` value, then for hypothesis examples,
    on a private uvloop.

    Call it with ``asyncio.to_thread`` so the calling loop keeps serving the engine meanwhile.
    """
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        session = runner.run(open_session())
        try:
            for value in explicit:
                runner.run(check(session, value))

            @settings(
                max_examples=examples,
                deadline=None,
                database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
            )
            @given(strategy)
            def example(value: Any) -> None:
                runner.run(check(session, value))

            example()
        finally:
            runner.run(close_session(session))
