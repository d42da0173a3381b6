"""The admin API fuzzed by schemathesis from its OpenAPI document (engine/admin/openapi.json).

For every operation, schema-valid (positive) and schema-violating (negative) requests are generated
from the document and sent over real HTTP, with the bearer token, to an in-process engine; each
answer must not be a 5xx, must be documented (status, content type, headers, body schema), and a
4xx must be a JSON error whose message starts with the field it names. Negative requests must be
refused; positive ones accepted, except for the few refusals that depend on state rather than on
the request's shape (:data:`STATE_DEPENDENT`). Requests with a valid ``{id}`` take a live
endpoint or delivery id half the time, so that they reach the database rather than a 404.

Nothing leaves the machine: every ``url`` sent is moved to ``127.0.0.1`` (:func:`to_loopback`),
the SSRF guard is on and http off while the fuzz runs, and the engine's sender is fenced
(:func:`fence`) so that a delivery to any host but a loopback literal is refused and reported.
The engine keeps delivering meanwhile: a canary reaches the receiver before and after the fuzz,
and probe events emitted during it each get their (guard-refused) attempt promptly.

Hypothesis runs derandomized (the same cases on every run) in a worker thread, since schemathesis
calls with ``requests``; the engine and the receiver run on the test's event loop.
"""

from __future__ import annotations

import asyncio
import ipaddress
import os
import re
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeAlias
from urllib.parse import quote

import asyncpg
import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from hypothesis.errors import Unsatisfiable
from schemathesis import APIOperation, Case, GenerationMode, Response
from schemathesis.checks import CheckFunction, not_a_server_error
from schemathesis.config import SchemathesisConfig
from schemathesis.core.failures import FailureGroup
from schemathesis.core.parameters import ParameterLocation
from schemathesis.core.result import Ok
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    negative_data_rejection,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)
from yarl import URL

from engine.delivery.http import InvalidUrlError, Sender
from tests.support.db import intake_drained
from tests.support.engines import RunningEngine, wait_until
from tests.support.receiver import Receiver

StartEngine = Callable[..., Awaitable[RunningEngine]]
Operation: TypeAlias = "APIOperation[Any, Any, Any, Any]"
AnyCase: TypeAlias = "Case[Any]"

TOKEN = "t" * 32  # the admin token of the engine under test
AUTH = {"Authorization": f"Bearer {TOKEN}"}
DOC_PATH = Path(__file__).resolve().parents[2] / "engine" / "admin" / "openapi.json"
# Per operation and mode: about 1,300 requests, some 10 s. WEBHOOKS_FUZZ_EXAMPLES=1000 digs deeper.
MAX_EXAMPLES = int(os.environ.get("WEBHOOKS_FUZZ_EXAMPLES", "50"))
HTTP_TIMEOUT_S = 20.0
POOL_ACCOUNT = "fuzz-pool"
CANARY_ACCOUNT = "canary"
PROBE_ACCOUNT = "probe"
PROBE_EVERY_S = 0.5
CANARY_TIMEOUT_S = 10.0
MAX_PROBE_LAG_S = 10.0  # from a probe's emit to its first attempt, while the API is fuzzed
LOOPBACK = "127.0.0.1"
FENCED_PORT = 1  # nothing listens there: an attempt the guard lets through is refused at once

# The configuration schemathesis generates and checks with: no Authorization header of its own
# (every request carries the real token, so a refusal is about the request, not the token), a
# fixed seed, and negative requests refused with a client error only: 400 invalid input, 404 a
# well-formed id that does not exist, 405 a method the path lacks, 413 too large. Never 401 (the
# token is right) and never 5xx.
CONFIG = SchemathesisConfig.from_dict(
    {
        "seed": 5,
        "generation": {"with-security-parameters": False},
        "checks": {"negative_data_rejection": {"expected-statuses": [400, 404, 405, 413]}},
    }
)
CHECKS: list[CheckFunction] = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    negative_data_rejection,
]
# Refusals of schema-valid requests that depend on state the document cannot describe:
# (operationId or None for any, status, error code, field, message ending or None for any).
STATE_DEPENDENT: tuple[tuple[str | None, int, str, str, str | None], ...] = (
    (None, 404, "not_found", "id", None),  # no such endpoint or delivery (or deleted)
    ("recoverEndpoint", 409, "conflict", "id", "enable it first"),  # the endpoint is disabled
    ("redeliverDelivery", 409, "conflict", "id", None),  # disabled endpoint, or past retention
    ("listEndpoints", 400, "invalid_field", "cursor", None),  # a made-up cursor
    ("listDeliveries", 400, "invalid_field", "cursor", None),
    ("recoverEndpoint", 400, "invalid_field", "since", "must not be in the future"),
    ("rotateEndpointSecret", 400, "invalid_field", "secret", "must differ from the current secret"),
    # What the document cannot describe, only the database checks: a filter's JSON path grammar,
    # and custom headers' total size (each header alone is within the document's bounds).
    (None, 400, "invalid_field", "filter", None),
    (None, 400, "invalid_field", "headers", "over the limit of 4096 bytes"),
    ("sendTestEvent", 409, "conflict", "id", "enable it first"),  # the endpoint is disabled
    # The document cannot say that account_id is required with one token and not the other.
    ("createEndpoint", 400, "invalid_field", "account_id", "is required with the operator token"),
)
PORTAL_KEY = "p" * 32  # portal access is on, so that createPortalAccess answers 201
# The authority of an absolute URL as the database's webhooks.check_url reads it: scheme, optional
# userinfo, host (bracketed IPv6, or a name or IPv4 of letters, digits, dots and dashes), port.
URL_AUTHORITY = re.compile(
    r"^(?P<scheme>[A-Za-z][A-Za-z0-9+.-]*)(?P<userinfo>://(?:[^/?#@\s]*@)?)"
    r"(?P<host>\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9](?:[A-Za-z0-9.-]*[A-Za-z0-9])?)"
    r"(?::(?P<port>[0-9]{1,5}))?(?=[/?#]|$)"
)
MAX_URL = 2048  # characters: the document's maxLength of url


def to_loopback(url: str) -> str:
    """``url`` aimed at ``https://127.0.0.1:1``, keeping whether the document allows it.

    The host becomes 127.0.0.1, http becomes https and a port from 1 to 65535 (or none) becomes
    FENCED_PORT; userinfo, path, query and fragment stay. Each swap is between values the document
    allows alike, so a positive case stays positive and a negative one negative; an out-of-range
    port (which the document and the database refuse) is kept. A URL the database would not read
    as one (no match) is left alone. Only the length could cross the limit: a too-long URL is kept
    too long with a fragment, and a URL that would become too long loses its last characters.
    """
    match = URL_AUTHORITY.match(url)
    if match is None:
        return url
    scheme = "https" if match["scheme"].lower() == "http" else match["scheme"]
    port = match["port"]
    if port is None or 1 <= int(port) <= 65535:
        port = str(FENCED_PORT)
    moved = f"{scheme}{match['userinfo']}{LOOPBACK}:{port}{url[match.end() :]}"
    if len(url) > MAX_URL >= len(moved):
        moved += "#" + "x" * (len(url) - len(moved))
    elif len(moved) > MAX_URL >= len(url):
        moved = re.sub(r"%[0-9A-Fa-f]?$", "", moved[:MAX_URL])  # no escape cut in half
    return moved


def is_loopback_literal(host: str | None) -> bool:
    """Whether ``host`` is an IP literal on this machine's loopback."""
    try:
        return ipaddress.ip_address((host or "").removeprefix("[").removesuffix("]")).is_loopback
    except ValueError:
        return False


@pytest.fixture
def fence(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Fence the engine's sender to loopback IP literals; the list collects the URLs it refused.

    The fence runs after the sender's own checks (scheme, SSRF guard on literals), so it only ever
    sees what the engine would really have sent, and refuses names before any DNS query.
    """
    refused: list[str] = []
    vet = Sender._vet_url

    def fenced(self: Sender, url: str) -> URL:
        target = vet(self, url)
        if not is_loopback_literal(target.raw_host):
            refused.append(url)
            raise InvalidUrlError("outside the test's loopback fence")
        return target

    monkeypatch.setattr(Sender, "_vet_url", fenced)
    return refused


@dataclass(frozen=True)
class Run:
    """Who fuzzes: the headers every request carries, the configuration, the refusals of valid
    requests that are expected, and an extra check of each answer (None: it passes)."""

    headers: dict[str, str]
    config: SchemathesisConfig
    refusals: tuple[tuple[str | None, int, str, str, str | None], ...]
    check: Callable[[Response], str | None] | None = None
    max_examples: int = MAX_EXAMPLES  # per operation and mode


OPERATOR_RUN = Run(AUTH, CONFIG, STATE_DEPENDENT)


@dataclass
class Pool:
    """Live ids that positive cases use half the time instead of generated ones."""

    endpoint_ids: list[str]
    delivery_ids: list[int]

    def ids_for(self, operation: Operation) -> Sequence[str | int]:
        if "{id}" not in operation.path:
            return ()
        if operation.path.startswith("/v1/deliveries/"):
            return self.delivery_ids
        return self.endpoint_ids


@dataclass
class Tally:
    """What the fuzz sent and what came back."""

    cases: Counter[tuple[str, str]] = field(default_factory=Counter)
    statuses: Counter[tuple[str, str, int]] = field(default_factory=Counter)
    state_dependent: Counter[tuple[str, int, str]] = field(default_factory=Counter)
    planned: int = 0  # operation and mode pairs fuzzed
    no_negative: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)


def operation_id(operation: Operation) -> str:
    return str(operation.definition.raw.get("operationId", operation.label))


def has_inputs(operation: Operation) -> bool:
    """Whether the document gives the operation anything to violate: parameters or a body."""
    raw = operation.definition.raw
    item = operation.schema.raw_schema["paths"][operation.path]
    return bool(raw.get("parameters") or item.get("parameters") or raw.get("requestBody"))


def operations(schema: schemathesis.BaseSchema) -> list[Operation]:
    """Every operation of the document, deletes last so the pool's endpoints live longest."""
    found: list[Operation] = []
    for result in schema.get_all_operations():
        assert isinstance(result, Ok), result
        found.append(result.ok())
    return sorted(found, key=lambda op: op.method.upper() == "DELETE")


def error_of(response: Response) -> dict[str, Any] | None:
    """The ``error`` object of a JSON error answer, or None."""
    try:
        body = response.json()
    except ValueError:
        return None
    error = body.get("error") if isinstance(body, dict) else None
    return error if isinstance(error, dict) else None


def names_the_problem(response: Response) -> str | None:
    """Why a 4xx answer does not name what was wrong, or None when it does."""
    error = error_of(response)
    if error is None:
        return "a 4xx without a JSON error object"
    if error.get("status") != response.status_code or not error.get("code"):
        return "the error's status or code is missing or wrong"
    message, name = error.get("message"), error.get("field")
    if not isinstance(message, str) or not message:
        return "the error has no message"
    if name is not None and response.status_code != 401 and not message.startswith(f"{name}:"):
        return f"the message does not start with the field {name!r}"
    return None


def state_dependent(operation: Operation, response: Response, run: Run) -> bool:
    """Whether a refusal of a schema-valid request is one of the run's (:data:`STATE_DEPENDENT`
    for the operator's)."""
    error = error_of(response) or {}
    message = str(error.get("message", ""))
    return any(
        op in (None, operation_id(operation))
        and status == response.status_code
        and code == error.get("code")
        and name == error.get("field")
        and (ending is None or message.endswith(ending))
        for op, status, code, name, ending in run.refusals
    )


def judge(case: AnyCase, response: Response, mode: GenerationMode, tally: Tally, run: Run) -> None:
    """Run schemathesis's checks and ours on one answer; record each problem with a curl line."""
    label = case.operation.label
    problems: list[str] = []
    try:
        case.validate_response(response, checks=CHECKS, headers=run.headers)
    except FailureGroup as group:
        problems.extend(f"{failure.title}: {failure.message}" for failure in group.exceptions)
    status = response.status_code
    if 400 <= status < 500 and (why := names_the_problem(response)) is not None:
        problems.append(why)
    if run.check is not None and (why := run.check(response)) is not None:
        problems.append(why)
    if mode is GenerationMode.POSITIVE and not 200 <= status < 300:
        if state_dependent(case.operation, response, run):
            error = error_of(response) or {}
            tally.state_dependent[(label, status, str(error.get("field")))] += 1
        else:
            problems.append("a schema-valid request was refused")
    if problems:
        curl = case.as_curl_command(headers=run.headers)
        detail = "\n    ".join(problems)
        tally.problems.append(
            f"{label} [{mode.value}] answered {status} {response.text[:300]}\n"
            f"    {detail}\n    {curl[:600]}"
        )


def prepare(case: AnyCase, mode: GenerationMode, pick: str | int | None) -> None:
    """Keep generated URLs on loopback; give a valid path the pool's id when one was drawn."""
    body = case.body
    url = body.get("url") if isinstance(body, dict) else None
    if isinstance(body, dict) and isinstance(url, str):
        case.body = {**body, "url": to_loopback(url)}
    path_is_valid = mode is GenerationMode.POSITIVE or _path_is_positive(case)
    if pick is not None and path_is_valid:
        case.path_parameters = {**(case.path_parameters or {}), "id": pick}


def _path_is_positive(case: AnyCase) -> bool:
    meta = case.meta
    if meta is None:
        return False
    return all(
        component.mode is GenerationMode.POSITIVE
        for location, component in meta.components.items()
        if location is ParameterLocation.PATH
    )


def fuzz_operation(
    operation: Operation,
    mode: GenerationMode,
    base_url: str,
    session: requests.Session,
    pool: Pool,
    tally: Tally,
    run: Run,
) -> None:
    """Send up to MAX_EXAMPLES generated requests of one operation and mode, judging each."""
    ids = pool.ids_for(operation)
    picks: st.SearchStrategy[str | int | None] = (
        st.one_of(st.none(), st.sampled_from(ids)) if ids else st.none()
    )

    @settings(
        max_examples=run.max_examples,
        deadline=None,
        derandomize=True,
        database=None,
        phases=[Phase.explicit, Phase.generate],  # no shrinking: every problem is reported as is
        suppress_health_check=list(HealthCheck),
    )
    @given(case=operation.as_strategy(generation_mode=mode), pick=picks)
    def send(case: AnyCase, pick: str | int | None) -> None:
        prepare(case, mode, pick)
        response = case.call(
            base_url=base_url, session=session, headers=run.headers, timeout=HTTP_TIMEOUT_S
        )
        tally.cases[(operation.label, mode.value)] += 1
        tally.statuses[(operation.label, mode.value, response.status_code)] += 1
        judge(case, response, mode, tally, run)

    send()


def fuzz(base_url: str, pool: Pool, run: Run = OPERATOR_RUN) -> Tally:
    """Fuzz every operation of the document, positive then negative; what happened."""
    schema = schemathesis.openapi.from_path(DOC_PATH, config=run.config)
    tally = Tally()
    with requests.Session() as session:
        for operation in operations(schema):
            for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
                if mode is GenerationMode.NEGATIVE and not has_inputs(operation):
                    tally.no_negative.append(operation.label)  # nothing to violate
                    continue
                tally.planned += 1
                try:
                    fuzz_operation(operation, mode, base_url, session, pool, tally, run)
                except Unsatisfiable:
                    tally.problems.append(f"{operation.label} [{mode.value}]: no case generated")
    return tally


async def set_policy(conn: asyncpg.Connection, running: RunningEngine, *, guarded: bool) -> None:
    """Turn the SSRF guard and the https requirement on (guarded) or off, and wait until the
    engine applied it."""
    await conn.execute(
        "UPDATE webhooks.settings SET allow_http = $1, allow_private_networks = $1", not guarded
    )

    async def applied() -> bool:
        policy = running.engine.policy
        return policy is not None and policy.allow_private_networks is not guarded

    await wait_until(applied, what="the engine to reload webhooks.settings")


def api(method: str, base_url: str, path: str, body: Any = None) -> Any:
    """One admin API call that must succeed (for set-up, from the worker thread)."""
    response = requests.request(
        method, base_url + path, json=body, headers=AUTH, timeout=HTTP_TIMEOUT_S
    )
    assert 200 <= response.status_code < 300, (method, path, response.text)
    return response.json()


def seed_pool(base_url: str) -> list[str]:
    """Endpoints on the fenced loopback port, and events for them; returns the endpoints' ids.
    The engine fans the events out into deliveries (see pool_of)."""
    endpoint_ids = [
        api(
            "POST",
            base_url,
            "/v1/endpoints",
            {"account_id": POOL_ACCOUNT, "url": f"https://{LOOPBACK}:{FENCED_PORT}/pool/{n}"},
        )["id"]
        for n in range(6)
    ]
    for n in range(4):
        api(
            "POST",
            base_url,
            "/v1/events",
            {"account_id": POOL_ACCOUNT, "type": "email.sent", "payload": {"n": n}},
        )
    return endpoint_ids


def pool_of(base_url: str, endpoint_ids: list[str]) -> Pool:
    """The ids to fuzz: the pool's endpoints and, once fanned out, their deliveries."""
    listed = api("GET", base_url, f"/v1/deliveries?account_id={POOL_ACCOUNT}&limit=1000")
    delivery_ids = [row["delivery_id"] for row in listed["data"]]
    assert len(delivery_ids) == 6 * 4
    return Pool(endpoint_ids, delivery_ids)


async def canary_arrives(base_url: str, receiver: Receiver, marker: str) -> None:
    """Emit a canary event and wait until the receiver has it (other canaries may come too)."""
    event = {"account_id": CANARY_ACCOUNT, "type": "email.sent", "payload": {"canary": marker}}
    await asyncio.to_thread(api, "POST", base_url, "/v1/events", event)

    async def arrived() -> bool:
        return any(marker.encode() in r.body for r in receiver.received_on("/canary"))

    await wait_until(arrived, timeout_s=CANARY_TIMEOUT_S, what=f"the canary {marker!r}")


async def probe_while(running: asyncio.Task[Tally], base_url: str) -> int:
    """Emit a probe event every PROBE_EVERY_S until the fuzz ends; how many were emitted."""
    emitted = 0
    while not running.done():
        await asyncio.to_thread(
            api,
            "POST",
            base_url,
            "/v1/events",
            {"account_id": PROBE_ACCOUNT, "type": "email.sent", "payload": {"probe": emitted}},
        )
        emitted += 1
        await asyncio.wait([running], timeout=PROBE_EVERY_S)
    return emitted


def summary(tally: Tally) -> Iterator[str]:
    for (label, mode), count in sorted(tally.cases.items()):
        statuses = sorted(
            (s, n) for (lab, m, s), n in tally.statuses.items() if (lab, m) == (label, mode)
        )
        yield f"{label} [{mode}]: {count} cases, statuses {dict(statuses)}"
    yield f"state-dependent refusals of valid requests: {dict(tally.state_dependent)}"
    yield f"no negative cases possible (no parameters, no body): {tally.no_negative}"


@pytest.mark.slow
async def test_the_admin_api_holds_to_its_document_under_fuzzing(
    open_policy: None,
    start_engine: StartEngine,
    receiver: Receiver,
    conn: asyncpg.Connection,
    fence: list[str],
) -> None:
    """Generated valid and invalid requests to every operation get documented answers, never a
    5xx, invalid ones a 4xx naming the problem, while the engine keeps delivering."""
    running = await start_engine(admin_token=TOKEN, portal_key=PORTAL_KEY)
    base_url = running.engine.admin_url
    assert base_url is not None

    canary = {"account_id": CANARY_ACCOUNT, "url": receiver.url("/canary")}
    await asyncio.to_thread(api, "POST", base_url, "/v1/endpoints", canary)
    probe = {"account_id": PROBE_ACCOUNT, "url": f"https://{LOOPBACK}:{FENCED_PORT}/probe"}
    await asyncio.to_thread(api, "POST", base_url, "/v1/endpoints", probe)
    await canary_arrives(base_url, receiver, "before the fuzz")
    endpoint_ids = await asyncio.to_thread(seed_pool, base_url)
    await wait_until(lambda: intake_drained(conn), what="the pool's events fanned out")
    pool = await asyncio.to_thread(pool_of, base_url, endpoint_ids)

    await set_policy(conn, running, guarded=True)
    started = time.monotonic()
    fuzzing = asyncio.ensure_future(asyncio.to_thread(fuzz, base_url, pool))
    probes = await probe_while(fuzzing, base_url)
    tally = await fuzzing
    elapsed = time.monotonic() - started
    print(f"fuzzed in {elapsed:.1f} s", *summary(tally), sep="\n")
    assert not tally.problems, f"{len(tally.problems)} problems:\n" + "\n".join(tally.problems)
    assert len(tally.cases) == tally.planned, "every operation and mode sent requests"
    assert fence == [], "a delivery was aimed outside loopback"

    async def probes_attempted() -> bool:
        attempted = await conn.fetchval(
            "SELECT count(DISTINCT a.event_id) FROM webhooks.attempts a"
            " JOIN webhooks.endpoints e ON e.id = a.endpoint_id WHERE e.account_id = $1",
            PROBE_ACCOUNT,
        )
        return bool(attempted == probes)

    await wait_until(probes_attempted, what="an attempt for every probe emitted during the fuzz")
    lags = await conn.fetch(
        "SELECT ev.id, min(a.started_at) - ev.created_at AS lag, array_agg(DISTINCT a.error_kind)"
        " AS kinds FROM webhooks.events ev JOIN webhooks.attempts a ON a.event_id = ev.id"
        " WHERE ev.account_id = $1 GROUP BY ev.id, ev.created_at",
        PROBE_ACCOUNT,
    )
    assert probes >= 2
    assert len(lags) == probes
    assert all(row["kinds"] == ["blocked_address"] for row in lags), "the guard was on"
    worst = max(row["lag"].total_seconds() for row in lags)
    assert worst < MAX_PROBE_LAG_S, f"a probe waited {worst:.1f} s for its attempt"

    hosts = await conn.fetch("SELECT DISTINCT url FROM webhooks.endpoints")
    assert all(is_loopback_literal(URL(row["url"]).raw_host) for row in hosts), hosts

    await set_policy(conn, running, guarded=False)
    await canary_arrives(base_url, receiver, "after the fuzz")
    assert not running.task.done()
    crashed = await conn.fetch(
        "SELECT delivery_id, error_message FROM webhooks.attempts WHERE error_kind = 'internal'"
    )
    assert crashed == [], "attempts failed inside the engine (a bug of ours): " + repr(crashed)


async def test_valid_times_outside_pythons_years_in_utc_are_clamped(
    open_policy: None, start_engine: StartEngine, receiver: Receiver
) -> None:
    """A `since` whose UTC instant falls before year 1 or after year 9999 is taken as the start
    or the end of time, not refused."""
    running = await start_engine(admin_token=TOKEN)
    base_url = running.engine.admin_url
    assert base_url is not None
    created = {"account_id": "clamp", "url": receiver.url("/clamp")}
    endpoint = await asyncio.to_thread(api, "POST", base_url, "/v1/endpoints", created)
    event = {"account_id": "clamp", "type": "email.sent", "payload": {}}
    await asyncio.to_thread(api, "POST", base_url, "/v1/events", event)
    await receiver.wait_for(1, "/clamp")
    earliest, latest = "0001-01-01T00:00:00+05:00", "9999-12-31T23:00:00-05:00"

    def deliveries(since: str) -> int:
        page = api("GET", base_url, f"/v1/deliveries?account_id=clamp&since={quote(since)}")
        return len(page["data"])

    assert await asyncio.to_thread(deliveries, earliest) == 1
    assert await asyncio.to_thread(deliveries, latest) == 0
    recover = f"{base_url}/v1/endpoints/{endpoint['id']}/recover"
    answers = [
        await asyncio.to_thread(
            requests.post, recover, json={"since": since}, headers=AUTH, timeout=HTTP_TIMEOUT_S
        )
        for since in (earliest, latest)
    ]
    assert (answers[0].status_code, answers[0].json()) == (200, {"count": 0})
    assert answers[1].status_code == 400
    assert answers[1].json()["error"]["message"] == "since: must not be in the future"
