"""The admin API over real HTTP, held to its OpenAPI document (engine/admin/openapi.json).

Every request goes through :class:`Api`, which checks each answer against the document: the status
must be documented for the operation, the content type listed, required headers present and the
JSON body valid under the response's schema (Draft 2020-12, the dialect of OpenAPI 3.1, with
``uuid`` and ``date-time`` formats checked). Errors must carry status, code and message.
"""

from __future__ import annotations

import base64
import contextlib
import json
import re
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import quote

import aiohttp
import asyncpg
import pytest
from jsonschema import Draft202012Validator, FormatChecker
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012

from engine.admin.portal import PATHS as PORTAL_PATHS
from engine.admin.routes import openapi_document
from tests.e2e.conftest import TEST_SETTINGS
from tests.support.db import intake_drained
from tests.support.engines import RunningEngine, launch_engine, wait_until
from tests.support.pgproxy import PgProxy
from tests.support.receiver import Receiver, Reply

StartEngine = Callable[..., Awaitable[RunningEngine]]

TOKEN = "test-admin-token-0123456789abcdef"  # noqa: S105 - a test token, not a secret
HTTP_TIMEOUT = aiohttp.ClientTimeout(total=20)
DOC_PATH = Path(__file__).resolve().parents[2] / "engine" / "admin" / "openapi.json"
DOC: dict[str, Any] = json.loads(DOC_PATH.read_text())
METHODS = ("get", "put", "post", "patch", "delete")
NO_BODY = object()
MISSING_ID = "00000000-0000-4000-8000-000000000000"
RFC3339 = re.compile(
    r"[0-9]{4}-[0-9]{2}-[0-9]{2}[Tt][0-9]{2}:[0-9]{2}:[0-9]{2}(\.[0-9]+)?([Zz]|[+-][0-9]{2}:[0-9]{2})"
)

REGISTRY: Registry[Any] = Registry().with_resource(
    "urn:openapi", Resource.from_contents(DOC, default_specification=DRAFT202012)
)
FORMATS = FormatChecker(formats=["uuid"])


@FORMATS.checks("date-time", raises=ValueError)
def _is_date_time(value: object) -> bool:
    """RFC 3339 date-time, as OpenAPI 3.1 means it (jsonschema checks it only with extras)."""
    if not isinstance(value, str):
        return True
    if RFC3339.fullmatch(value) is None:
        return False
    datetime.fromisoformat(value.upper())
    return True


def escape(token: str) -> str:
    """A JSON Pointer reference token (RFC 6901)."""
    return token.replace("~", "~0").replace("/", "~1")


def resolve(pointer: str) -> Any:
    """The part of the document at a JSON Pointer."""
    node: Any = DOC
    for token in pointer.split("/")[1:]:
        node = node[token.replace("~1", "/").replace("~0", "~")]
    return node


def validator(pointer: str) -> Draft202012Validator:
    """A validator of the schema at ``pointer``, resolving its $refs within the document."""
    schema = {"$ref": "urn:openapi#" + quote(pointer, safe="/~")}
    return Draft202012Validator(schema, registry=REGISTRY, format_checker=FORMATS)


def template_of(path: str) -> str:
    """The document's path template that ``path`` matches; fails for undocumented paths."""
    for template in DOC["paths"]:
        if re.fullmatch(re.sub(r"\{[^}]+\}", "[^/]+", template), path):
            return str(template)
    raise AssertionError(f"{path} is not in the document")


def operations() -> Iterator[tuple[str, str, dict[str, Any]]]:
    """(method, path template, operation) of every operation in the document."""
    for template, item in DOC["paths"].items():
        for method in METHODS:
            if method in item:
                yield method, template, item[method]


@dataclass(frozen=True)
class Answer:
    """One HTTP answer, read whole."""

    method: str
    path: str
    status: int
    headers: Mapping[str, str]
    content_type: str
    text: str
    json: Any


def conform(answer: Answer) -> None:
    """Fail unless ``answer`` is what the document says its operation answers."""
    template = template_of(answer.path)
    method = answer.method.lower()
    operation = DOC["paths"][template][method]
    assert str(answer.status) in operation["responses"], (
        f"{answer.method} {template} answered {answer.status}, which is not documented: "
        f"{answer.text[:300]}"
    )
    pointer = f"/paths/{escape(template)}/{method}/responses/{answer.status}"
    response = resolve(pointer)
    if "$ref" in response:
        pointer = response["$ref"][1:]
        response = resolve(pointer)
    for name, header in response.get("headers", {}).items():
        if header.get("required"):
            assert name in answer.headers, f"{template}: header {name} missing"
        if name in answer.headers:
            Draft202012Validator(header["schema"]).validate(answer.headers[name])
    content = response.get("content")
    if content is None:
        assert answer.text == "", f"{template} {answer.status} documents no body"
        return
    assert answer.content_type in content, f"{template}: {answer.content_type} undocumented"
    if answer.content_type == "application/json":
        schema_pointer = f"{pointer}/content/{escape('application/json')}/schema"
        validator(schema_pointer).validate(answer.json)
    if pointer.startswith("/components/responses/"):  # the shared error answers
        error = answer.json["error"]
        assert error["status"] == answer.status
        assert error["code"], answer.text
        assert error["message"], answer.text


class Api:
    """A client of one engine's admin API that holds every answer to the document."""

    def __init__(self, running: RunningEngine) -> None:
        assert running.engine.admin_url is not None
        self.base = running.engine.admin_url
        self.running = running
        self.answers: list[Answer] = []

    async def call(
        self,
        method: str,
        path: str,
        body: Any = NO_BODY,
        *,
        raw: bytes | None = None,
        query: Mapping[str, str] | list[tuple[str, str]] | None = None,
        token: str | None = TOKEN,
        headers: Mapping[str, str] | None = None,
    ) -> Answer:
        """Send one request; the answer is checked against the document and kept."""
        sent = dict(headers or {})
        if token is not None:
            sent["Authorization"] = f"Bearer {token}"
        data: bytes | None = raw
        if body is not NO_BODY:
            data = json.dumps(body).encode()
        if data is not None:
            sent.setdefault("Content-Type", "application/json")
        async with (
            aiohttp.ClientSession(timeout=HTTP_TIMEOUT) as session,
            session.request(method, self.base + path, params=query, data=data, headers=sent) as r,
        ):
            text = await r.text()
            parsed = json.loads(text) if r.content_type == "application/json" else None
            answer = Answer(method, path, r.status, r.headers, r.content_type, text, parsed)
        conform(answer)
        self.answers.append(answer)
        return answer

    async def ok(self, method: str, path: str, body: Any = NO_BODY, **kwargs: Any) -> Any:
        """Send one request that must succeed (2xx); its JSON body."""
        answer = await self.call(method, path, body, **kwargs)
        assert 200 <= answer.status < 300, f"{method} {path}: {answer.status} {answer.text}"
        return answer.json

    async def create(self, account: str, url: str, **fields: Any) -> dict[str, Any]:
        """Register an endpoint; the 201 answer."""
        answer = await self.call(
            "POST", "/v1/endpoints", {"account_id": account, "url": url, **fields}
        )
        assert answer.status == 201, answer.text
        assert answer.headers["Location"] == f"/v1/endpoints/{answer.json['id']}"
        endpoint: dict[str, Any] = answer.json
        return endpoint

    async def all_pages(self, path: str, query: Mapping[str, str]) -> list[dict[str, Any]]:
        """Every row of a list, following next_cursor."""
        rows: list[dict[str, Any]] = []
        cursor: str | None = None
        while True:
            page = await self.ok(
                "GET", path, query={**query, **({"cursor": cursor} if cursor else {})}
            )
            rows.extend(page["data"])
            cursor = page["next_cursor"]
            if cursor is None:
                return rows


def assert_error(answer: Answer, status: int, code: str, field: str | None) -> None:
    """``answer`` is the JSON error ``status``/``code``, naming ``field`` first in its message."""
    assert answer.status == status, f"{answer.method} {answer.path}: {answer.text}"
    error = answer.json["error"]
    assert (error["status"], error["code"]) == (status, code), answer.text
    assert error.get("field") == field, answer.text
    if field is not None and code != "unauthorized":
        assert error["message"].startswith(f"{field}:"), answer.text


@pytest.fixture
async def api(open_policy: None, start_engine: StartEngine) -> Api:
    """An engine with a token, http to loopback allowed, and a client holding it to the document."""
    return Api(await start_engine(admin_token=TOKEN))


async def test_the_document_lists_exactly_the_routes_the_app_serves(api: Api) -> None:
    """The paths and methods of the document are those of the running app's router, no more."""
    app = api.running.engine.admin_app
    assert app is not None
    served = {
        (route.method, route.resource.canonical)
        for route in app.router.routes()
        if route.resource is not None and route.method != "HEAD"  # aiohttp adds HEAD to each GET
    }
    assert served == {(method.upper(), template) for method, template, _ in operations()}


def refs(node: Any) -> Iterator[str]:
    """Every $ref in a part of the document."""
    if isinstance(node, dict):
        if isinstance(node.get("$ref"), str):
            yield node["$ref"]
        for value in node.values():
            yield from refs(value)
    elif isinstance(node, list):
        for value in node:
            yield from refs(value)


def test_the_document_is_openapi_3_1_and_every_reference_resolves() -> None:
    """Each schema is valid Draft 2020-12, every $ref resolves, and formats are really checked."""
    assert DOC["openapi"].startswith("3.1.")
    schemes = DOC["components"]["securitySchemes"]
    assert set(schemes) == {"operatorToken", "portalToken"}
    assert {(s["type"], s["scheme"]) for s in schemes.values()} == {("http", "bearer")}
    for schema in DOC["components"]["schemas"].values():
        Draft202012Validator.check_schema(schema)
    for ref in refs(DOC):
        assert ref.startswith("#/"), ref
        resolve(ref[1:])
    assert not FORMATS.conforms("yesterday", "date-time")
    assert not FORMATS.conforms("2025-01-31T12:00:00", "date-time"), "an offset is required"
    assert not FORMATS.conforms("not-a-uuid", "uuid")


def test_every_operation_documents_its_errors() -> None:
    """Operation ids are unique; protected operations document 401, those with an id 400 and
    404, and those with a body 400 and 413; only the probes, the document and the portal's
    static files are public."""
    ids = [operation["operationId"] for _, _, operation in operations()]
    assert len(ids) == len(set(ids))
    public = {"/healthz", "/readyz", "/openapi.json", *PORTAL_PATHS}
    for method, template, operation in operations():
        responses = set(operation["responses"])
        assert (operation.get("security") == []) == (template in public), template
        assert ("401" in responses) == (template not in public), template
        if "{id}" in template:
            assert {"400", "404"} <= responses, template
        if "requestBody" in operation:
            assert {"400", "413"} <= responses, (method, template)


async def test_the_documented_event_types_are_the_catalogue(conn: asyncpg.Connection) -> None:
    """The event types the document enumerates are those of webhooks.event_types, and the
    subscriptions it allows are those names, their prefix wildcards and `*`."""
    names = sorted(await conn.fetchval("SELECT array_agg(name) FROM webhooks.event_types"))
    schemas = DOC["components"]["schemas"]
    assert schemas["EmitRequest"]["properties"]["type"]["enum"] == names
    wildcards = {name.split(".")[0] + ".*" for name in names}
    for schema in ("EndpointCreate", "EndpointUpdate"):
        items = schemas[schema]["properties"]["event_types"]["items"]
        assert sorted(items["enum"]) == sorted({"*", *wildcards, *names})


async def test_the_document_is_served_without_a_token_as_checked_in(api: Api) -> None:
    """GET /openapi.json answers the checked-in file byte for byte, with no token needed."""
    answer = await api.call("GET", "/openapi.json", token=None)
    assert answer.status == 200
    assert answer.text.encode() == DOC_PATH.read_bytes() == openapi_document()
    assert_error(
        await api.call("GET", "/openapi.json", query={"x": "1"}), 400, "unknown_field", "x"
    )


async def test_the_probes_and_metrics_answer_as_documented(
    api: Api, conn: asyncpg.Connection
) -> None:
    """/healthz and /readyz (ready, then not) answer without a token, /metrics with it, each as
    documented."""
    assert await api.ok("GET", "/healthz", token=None) == {"status": "ok"}

    async def ready() -> bool:
        return (await api.call("GET", "/readyz", token=None)).status == 200

    await wait_until(ready, what="/readyz ready")
    metrics = await api.call("GET", "/metrics")
    assert metrics.status == 200
    assert "misar_webhooks_attempts_total" in metrics.text
    await conn.execute(
        "UPDATE webhooks.schema_functions SET sha256 = 'changed'"
        " WHERE name = (SELECT min(name) FROM webhooks.schema_functions)"
    )
    not_ready = await api.call("GET", "/readyz", token=None)
    assert (not_ready.status, not_ready.json["failed"]) == (503, ["migrations"])


async def test_every_operation_but_the_public_ones_requires_the_token(api: Api) -> None:
    """Each protected operation answers 401 naming Authorization without the token or with a
    wrong one, before it looks at the request at all."""
    for method, template, operation in operations():
        if operation.get("security") == []:
            continue
        path = template.replace("{id}", "1" if "deliveries" in template else MISSING_ID)
        for token in (None, "wrong-token-0123456789abcdef", TOKEN.upper()):
            answer = await api.call(method.upper(), path, raw=b"{", token=token)
            assert_error(answer, 401, "unauthorized", "Authorization")
            assert answer.headers["WWW-Authenticate"] == "Bearer"


async def test_an_endpoint_lives_through_every_endpoint_operation(
    api: Api, receiver: Receiver
) -> None:
    """Create, list, show, update, disable, enable, rotate the secret, recover and delete an
    endpoint: each answer is documented and says what changed."""
    created = await api.create(
        "acct_life",
        receiver.url("/life"),
        event_types=["email.sent", "contact.*"],
        description="the life cycle",
        max_in_flight=4,
        ordering="strict",
        rate_limit_per_s=5,
    )
    the_id, secret = created["id"], created["secret"]
    assert secret.startswith("whsec_")
    assert len(secret) > 40
    assert created["event_types"] == ["contact.*", "email.sent"]
    assert (created["enabled"], created["max_in_flight"], created["ordering"]) == (
        True,
        4,
        "strict",
    )
    assert created["rate_limit_per_s"] == 5

    shown = await api.ok("GET", f"/v1/endpoints/{the_id}")
    assert shown["secret"] == secret[:10] + "…", "masked unless revealed"
    assert {k: v for k, v in shown.items() if k != "secret"} == {
        k: v for k, v in created.items() if k != "secret"
    }
    revealed = await api.ok("GET", f"/v1/endpoints/{the_id}", query={"reveal_secret": "true"})
    assert revealed["secret"] == secret
    listed = await api.ok("GET", "/v1/endpoints", query={"account_id": "acct_life"})
    assert [e["id"] for e in listed["data"]] == [the_id]
    assert listed["next_cursor"] is None

    updated = await api.ok(
        "PATCH",
        f"/v1/endpoints/{the_id}",
        {"url": receiver.url("/moved"), "rate_limit_per_s": None, "ordering": "dispatch"},
    )
    assert (updated["url"], updated["rate_limit_per_s"]) == (receiver.url("/moved"), None)
    assert (updated["ordering"], updated["description"]) == ("dispatch", "the life cycle")

    disabled = await api.ok(
        "POST", f"/v1/endpoints/{the_id}/disable", {"reason": "maintenance window"}
    )
    assert (disabled["enabled"], disabled["disabled_reason"]) == (False, "maintenance window")
    listed = await api.ok("GET", "/v1/endpoints", query={"enabled": "false"})
    assert [e["id"] for e in listed["data"]] == [the_id]
    recover = await api.call(
        "POST", f"/v1/endpoints/{the_id}/recover", {"since": "2020-01-01T00:00:00Z"}
    )
    assert_error(recover, 409, "conflict", "id")
    enabled = await api.ok("POST", f"/v1/endpoints/{the_id}/enable")
    assert (enabled["enabled"], enabled["disabled_at"], enabled["disabled_reason"]) == (
        True,
        None,
        None,
    )

    rotated = await api.ok("POST", f"/v1/endpoints/{the_id}/rotate-secret", {"grace_seconds": 60})
    assert rotated["id"] == the_id
    assert rotated["secret"].startswith("whsec_")
    assert rotated["secret"] != secret
    expires = datetime.fromisoformat(rotated["previous_secret_expires_at"])
    assert timedelta(seconds=50) < expires - datetime.now(UTC) <= timedelta(seconds=61)
    both = await api.ok("GET", f"/v1/endpoints/{the_id}", query={"reveal_secret": "true"})
    assert (both["secret"], both["previous_secret"]) == (rotated["secret"], secret)
    again = await api.ok("POST", f"/v1/endpoints/{the_id}/rotate-secret", {"grace_seconds": 0})
    assert again["previous_secret_expires_at"] is None
    own = "whsec_" + base64.b64encode(b"a key of thirty-two bytes, fine.").decode()
    chosen = await api.ok("POST", f"/v1/endpoints/{the_id}/rotate-secret", {"secret": own})
    assert chosen["secret"] == own

    since = (datetime.now(UTC) - timedelta(hours=1)).isoformat()
    assert await api.ok("POST", f"/v1/endpoints/{the_id}/recover", {"since": since}) == {"count": 0}

    deleted = await api.call("DELETE", f"/v1/endpoints/{the_id}")
    assert (deleted.status, deleted.text) == (204, "")
    assert_error(await api.call("GET", f"/v1/endpoints/{the_id}"), 404, "not_found", "id")
    listed = await api.ok("GET", "/v1/endpoints", query={"account_id": "acct_life"})
    assert listed["data"] == []


async def test_secrets_appear_only_in_create_rotate_and_reveal_answers(
    api: Api, receiver: Receiver
) -> None:
    """A secret is in the answers of create, rotate-secret and reveal_secret=true, never in
    another answer, error messages included."""
    created = await api.create("acct_secret", receiver.url("/s"))
    the_id = created["id"]
    rotated = await api.ok("POST", f"/v1/endpoints/{the_id}/rotate-secret")
    revealed = await api.ok("GET", f"/v1/endpoints/{the_id}", query={"reveal_secret": "true"})
    assert (revealed["secret"], revealed["previous_secret"]) == (
        rotated["secret"],
        created["secret"],
    )
    allowed = len(api.answers)  # the three answers above
    await api.ok("GET", f"/v1/endpoints/{the_id}")
    await api.ok("GET", f"/v1/endpoints/{the_id}", query={"reveal_secret": "false"})
    await api.ok("GET", "/v1/endpoints")
    await api.ok("PATCH", f"/v1/endpoints/{the_id}", {"description": "changed"})
    await api.ok("POST", f"/v1/endpoints/{the_id}/disable")
    await api.ok("POST", f"/v1/endpoints/{the_id}/enable")
    patch = await api.call("PATCH", f"/v1/endpoints/{the_id}", {"secret": rotated["secret"]})
    assert_error(patch, 400, "unknown_field", "secret")
    same = await api.call(
        "POST", f"/v1/endpoints/{the_id}/rotate-secret", {"secret": rotated["secret"]}
    )
    assert_error(same, 400, "invalid_field", "secret")
    bad = "whsec_!" + created["secret"][6:]
    refused = await api.call("POST", "/v1/endpoints", {"account_id": "a", "url": U, "secret": bad})
    assert_error(refused, 400, "invalid_field", "secret")
    for answer in api.answers[allowed:]:
        for secret in (created["secret"][6:], rotated["secret"][6:]):
            assert secret not in answer.text, f"{answer.method} {answer.path} leaked a secret"


async def test_emit_delivers_and_the_delivery_log_shows_every_attempt(
    api: Api, receiver: Receiver
) -> None:
    """An event emitted over HTTP is delivered after a retry; the delivery shows both attempts
    and the payload, and redeliver sends it again as a new delivery."""
    receiver.script("/flaky", Reply(status=500, body=b"try later"), Reply(status=200))
    endpoint = await api.create("acct_emit", receiver.url("/flaky"), event_types=["email.*"])
    payload = {"email_id": "em_1", "to": ["a@example.com"], "nested": {"n": 1.5, "ok": True}}
    emitted = await api.call(
        "POST", "/v1/events", {"account_id": "acct_emit", "type": "email.sent", "payload": payload}
    )
    assert emitted.status == 202
    event_id = emitted.json["event_id"]
    assert isinstance(event_id, int)

    async def delivered() -> list[dict[str, Any]]:
        rows = await api.all_pages("/v1/deliveries", {"endpoint_id": endpoint["id"]})
        return rows if all(r["status"] == "delivered" for r in rows) else []

    await wait_until(lambda: _nonempty(delivered()), what="the delivery delivered")
    [row] = await delivered()
    assert (row["event_id"], row["event_type"], row["attempts"]) == (event_id, "email.sent", 2)
    assert (row["account_id"], row["endpoint_url"]) == ("acct_emit", receiver.url("/flaky"))
    detail = await api.ok("GET", f"/v1/deliveries/{row['delivery_id']}")
    assert detail["delivery"] == row
    assert detail["payload"] == payload
    assert [a["status_code"] for a in detail["attempts"]] == [500, 200]
    assert [a["outcome"] for a in detail["attempts"]] == ["retry", "delivered"]
    assert detail["attempts"][0]["response_excerpt"] == "try later"
    assert detail["attempts"][0]["error_kind"] == "http_status"

    again = await api.call("POST", f"/v1/deliveries/{row['delivery_id']}/redeliver")
    assert again.status == 201
    new_id = again.json["delivery_id"]
    assert again.headers["Location"] == f"/v1/deliveries/{new_id}"
    assert new_id != row["delivery_id"]
    await receiver.wait_for(3, "/flaky")

    async def redelivered() -> bool:
        detail = await api.ok("GET", f"/v1/deliveries/{new_id}")
        return bool(detail["delivery"]["status"] == "delivered")

    await wait_until(redelivered, what="the redelivery delivered")
    bodies = {json.loads(r.body)["data"]["email_id"] for r in receiver.received_on("/flaky")}
    assert bodies == {"em_1"}


async def test_emit_answers_null_when_nobody_listens_and_honours_idempotency_keys(
    api: Api, receiver: Receiver, conn: asyncpg.Connection
) -> None:
    """Emitting to an account or type nobody subscribes to answers event_id null; the same
    idempotency key answers the first event's id and creates no second delivery."""
    await api.create("acct_idem", receiver.url("/idem"), event_types=["contact.created"])
    nobody = {"account_id": "acct_nobody", "type": "email.sent", "payload": {}}
    assert await api.ok("POST", "/v1/events", nobody) == {"event_id": None}
    other = {"account_id": "acct_idem", "type": "email.sent", "payload": {}}
    assert await api.ok("POST", "/v1/events", other) == {"event_id": None}
    keyed = {
        "account_id": "acct_idem",
        "type": "contact.created",
        "payload": {"contact": 7},
        "idempotency_key": "contact-7-created",
    }
    first = await api.ok("POST", "/v1/events", keyed)
    second = await api.ok("POST", "/v1/events", {**keyed, "payload": {"contact": 8}})
    assert first == second
    assert first["event_id"] is not None
    await wait_until(lambda: intake_drained(conn), what="the accepted event fanned out")
    rows = await api.all_pages("/v1/deliveries", {"account_id": "acct_idem"})
    assert [r["event_id"] for r in rows] == [first["event_id"]]


async def test_recover_resends_what_failed_and_refuses_a_disabled_endpoint(
    api: Api, receiver: Receiver, conn: asyncpg.Connection
) -> None:
    """A delivery that failed is re-sent by recover (count 1) and then delivered; recover and
    redeliver answer 409 naming the id while the endpoint is disabled."""
    await conn.execute("UPDATE webhooks.settings SET retry_schedule = '{1 second}'")
    receiver.script("/down", Reply(status=503), Reply(status=503), Reply(status=200))
    endpoint = await api.create("acct_rec", receiver.url("/down"))
    the_id = endpoint["id"]
    since = {"since": (datetime.now(UTC) - timedelta(minutes=5)).isoformat()}
    event = {"account_id": "acct_rec", "type": "email.bounced", "payload": {"n": 1}}
    await api.ok("POST", "/v1/events", event)

    async def count(status: str) -> int:
        query = {"endpoint_id": the_id, "status": status}
        return len((await api.ok("GET", "/v1/deliveries", query=query))["data"])

    await wait_until(lambda: _equals(count("failed"), 1), what="the delivery failed")
    [row] = (await api.ok("GET", "/v1/deliveries", query={"endpoint_id": the_id}))["data"]
    assert (row["status"], row["attempts"], row["last_status_code"]) == ("failed", 2, 503)

    await api.ok("POST", f"/v1/endpoints/{the_id}/disable")
    conflict = await api.call("POST", f"/v1/deliveries/{row['delivery_id']}/redeliver")
    assert_error(conflict, 409, "conflict", "id")
    recover = await api.call("POST", f"/v1/endpoints/{the_id}/recover", since)
    assert_error(recover, 409, "conflict", "id")
    await api.ok("POST", f"/v1/endpoints/{the_id}/enable")

    assert await api.ok("POST", f"/v1/endpoints/{the_id}/recover", since) == {"count": 1}
    await wait_until(lambda: _equals(count("delivered"), 1), what="the recovered delivery")
    assert len(receiver.received_on("/down")) == 3
    assert await api.ok("POST", f"/v1/endpoints/{the_id}/recover", since) == {"count": 0}


async def test_lists_page_through_every_row_once_with_cursors(
    api: Api, receiver: Receiver, conn: asyncpg.Connection
) -> None:
    """Pages of 2 cover 5 endpoints and 5 deliveries once each, in order, ending with a null
    cursor; a cursor of one list is refused by the other, naming the cursor."""
    ids = [(await api.create("acct_page", receiver.url(f"/p{n}")))["id"] for n in range(5)]
    pages = []
    query = {"account_id": "acct_page", "limit": "2"}
    endpoint_cursor = None
    while True:
        page = await api.ok("GET", "/v1/endpoints", query=query)
        pages.append([e["id"] for e in page["data"]])
        if page["next_cursor"] is None:
            break
        endpoint_cursor = query["cursor"] = page["next_cursor"]
    assert pages == [ids[0:2], ids[2:4], ids[4:5]]
    assert endpoint_cursor is not None

    event = {"account_id": "acct_page", "type": "email.opened", "payload": {}}
    event_id = (await api.ok("POST", "/v1/events", event))["event_id"]
    await wait_until(lambda: intake_drained(conn), what="the accepted event fanned out")
    rows = await api.all_pages("/v1/deliveries", {"account_id": "acct_page", "limit": "2"})
    assert len(rows) == 5 == len({r["delivery_id"] for r in rows})
    assert {r["event_id"] for r in rows} == {event_id}
    assert {r["endpoint_id"] for r in rows} == set(ids)
    order = [(r["created_at"], r["delivery_id"]) for r in rows]
    assert order == sorted(order, reverse=True), "newest first"
    wrong = await api.call("GET", "/v1/deliveries", query={"cursor": endpoint_cursor})
    assert_error(wrong, 400, "invalid_field", "cursor")


async def test_filters_never_return_another_accounts_rows(api: Api, receiver: Receiver) -> None:
    """Filtering by account, endpoint, state, status, event type and time returns exactly the
    matching rows: account a's filters never show account b's endpoints or deliveries."""
    a1 = await api.create("acct_a", receiver.url("/a1"))
    a2 = await api.create("acct_a", receiver.url("/a2"), event_types=["contact.created"])
    b1 = await api.create("acct_b", receiver.url("/b1"))
    ab = await api.create("acct_ab", receiver.url("/ab"))  # a name that starts like acct_a
    await api.ok("POST", f"/v1/endpoints/{a2['id']}/disable")
    for account in ("acct_a", "acct_b", "acct_ab"):
        for kind in ("email.sent", "contact.created"):
            await api.ok("POST", "/v1/events", {"account_id": account, "type": kind, "payload": {}})

    async def everything() -> list[dict[str, Any]]:
        return await api.all_pages("/v1/deliveries", {})

    async def all_delivered() -> bool:
        rows = await everything()
        return len(rows) == 6 and all(r["status"] == "delivered" for r in rows)

    await wait_until(all_delivered, what="six deliveries delivered")

    async def endpoint_ids(query: dict[str, str]) -> set[str]:
        return {e["id"] for e in await api.all_pages("/v1/endpoints", query)}

    assert await endpoint_ids({"account_id": "acct_a"}) == {a1["id"], a2["id"]}
    assert await endpoint_ids({"account_id": "acct_a", "enabled": "true"}) == {a1["id"]}
    assert await endpoint_ids({"enabled": "true"}) == {a1["id"], b1["id"], ab["id"]}
    assert await endpoint_ids({"enabled": "false"}) == {a2["id"]}
    assert await endpoint_ids({"account_id": "ACCT_A"}) == set()

    rows_a = await api.all_pages("/v1/deliveries", {"account_id": "acct_a"})
    assert [(r["account_id"], r["endpoint_id"]) for r in rows_a] == [("acct_a", a1["id"])] * 2
    crossed = {"account_id": "acct_a", "endpoint_id": b1["id"]}
    assert await api.all_pages("/v1/deliveries", crossed) == []
    rows_b = await api.all_pages("/v1/deliveries", {"endpoint_id": b1["id"]})
    assert [r["account_id"] for r in rows_b] == ["acct_b"] * 2
    typed = {"account_id": "acct_b", "event_type": "contact.created"}
    assert [r["event_type"] for r in await api.all_pages("/v1/deliveries", typed)] == [
        "contact.created"
    ]
    all_rows = await everything()
    for status in ("pending", "in_flight", "retrying", "delivered", "failed", "cancelled"):
        rows = await api.all_pages("/v1/deliveries", {"status": status})
        assert rows == [r for r in all_rows if r["status"] == status], status
    later = (datetime.now(UTC) + timedelta(hours=1)).isoformat()
    assert await api.all_pages("/v1/deliveries", {"since": later}) == []
    earlier = (datetime.now(UTC) - timedelta(hours=1)).isoformat().replace("+00:00", "Z")
    assert await api.all_pages("/v1/deliveries", {"since": earlier}) == all_rows


@dataclass(frozen=True)
class Bad:
    """A request the API must refuse with 400 ``code`` naming ``field``."""

    method: str
    path: str
    body: Any
    field: str
    code: str = "invalid_field"
    query: Mapping[str, str] | list[tuple[str, str]] | None = None


U = "https://hooks.example.com/in"
E = "/v1/endpoints"
X = f"/v1/endpoints/{MISSING_ID}"
NEW = {"account_id": "acct_v", "url": U}
EMIT = {"account_id": "acct_v", "type": "email.sent", "payload": {}}
UF, IJ, UET = "unknown_field", "invalid_json", "unknown_event_type"
DEEP = b'{"payload": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"
BAD_REQUESTS = [
    Bad("POST", E, b"not json", "body", IJ),
    Bad("POST", E, b"", "body", IJ),
    Bad("POST", E, b"\xff\xfe{}", "body", IJ),
    Bad("POST", E, [NEW], "body", IJ),
    Bad("POST", E, b'{"account_id": NaN}', "body", IJ),
    Bad("POST", E, {**NEW, "colour": "red", "zzz": 1}, "colour", UF),
    Bad("POST", E, NEW, "dry_run", UF, {"dry_run": "1"}),
    Bad("POST", E, {"url": U}, "account_id"),
    Bad("POST", E, {**NEW, "account_id": 5}, "account_id"),
    Bad("POST", E, {**NEW, "account_id": ""}, "account_id"),
    Bad("POST", E, {**NEW, "account_id": "   "}, "account_id"),
    Bad("POST", E, {**NEW, "account_id": "a\x00b"}, "account_id"),
    Bad("POST", E, b'{"account_id": "\\ud800", "url": "https://x"}', "account_id"),
    Bad("POST", E, {**NEW, "account_id": "a" * 201}, "account_id"),
    Bad("POST", E, {**NEW, "url": None}, "url"),
    Bad("POST", E, {**NEW, "url": "ftp://files.example.com/"}, "url"),
    Bad("POST", E, {**NEW, "url": "https://exa mple.com/"}, "url"),
    Bad("POST", E, {**NEW, "event_types": "email.sent"}, "event_types"),
    Bad("POST", E, {**NEW, "event_types": []}, "event_types"),
    Bad("POST", E, {**NEW, "event_types": [1]}, "event_types"),
    Bad("POST", E, {**NEW, "event_types": ["email.nope"]}, "event_types", UET),
    Bad("POST", E, {**NEW, "event_types": ["nope.*"]}, "event_types"),
    Bad("POST", E, {**NEW, "max_in_flight": "8"}, "max_in_flight"),
    Bad("POST", E, {**NEW, "max_in_flight": 0}, "max_in_flight"),
    Bad("POST", E, {**NEW, "max_in_flight": True}, "max_in_flight"),
    Bad("POST", E, {**NEW, "max_in_flight": 2.5}, "max_in_flight"),
    Bad("POST", E, {**NEW, "max_in_flight": 10**30}, "max_in_flight"),
    Bad("POST", E, {**NEW, "ordering": "random"}, "ordering"),
    Bad("POST", E, {**NEW, "rate_limit_per_s": -1}, "rate_limit_per_s"),
    Bad("POST", E, {**NEW, "rate_limit_per_s": "fast"}, "rate_limit_per_s"),
    Bad("POST", E, {**NEW, "rate_limit_per_s": 10**400}, "rate_limit_per_s"),
    Bad("POST", E, {**NEW, "description": "d" * 1001}, "description"),
    Bad("POST", E, {**NEW, "secret": "whsec_c2hvcnQ="}, "secret"),
    Bad("GET", E, NO_BODY, "limit", query={"limit": "0"}),
    Bad("GET", E, NO_BODY, "limit", query={"limit": "1001"}),
    Bad("GET", E, NO_BODY, "limit", query={"limit": "ten"}),
    Bad("GET", E, NO_BODY, "limit", query={"limit": "1.0"}),
    Bad("GET", E, NO_BODY, "limit", query=[("limit", "1"), ("limit", "2")]),
    Bad("GET", E, NO_BODY, "enabled", query={"enabled": "yes"}),
    Bad("GET", E, NO_BODY, "cursor", query={"cursor": "garbage"}),
    Bad("GET", E, NO_BODY, "acount_id", UF, {"acount_id": "a"}),
    Bad("GET", E, NO_BODY, "account_id", query={"account_id": ""}),
    Bad("GET", E, NO_BODY, "account_id", query={"account_id": "a\x00"}),
    Bad("GET", E + "/not-a-uuid", NO_BODY, "id"),
    Bad("GET", E + "/" + MISSING_ID.replace("-", ""), NO_BODY, "id"),
    Bad("GET", X, NO_BODY, "reveal_secret", query={"reveal_secret": "1"}),
    Bad("PATCH", X, {}, "body"),
    Bad("PATCH", X, {"account_id": "x"}, "account_id", UF),
    Bad("PATCH", X, {"ordering": None}, "ordering"),
    Bad("PATCH", E + "/x", {"ordering": "strict"}, "id"),
    Bad("POST", X + "/disable", {"reason": 5}, "reason"),
    Bad("POST", X + "/disable", {"why": "x"}, "why", UF),
    Bad("POST", X + "/enable", {"now": True}, "now", UF),
    Bad("POST", X + "/rotate-secret", {"grace_seconds": -1}, "grace_seconds"),
    Bad("POST", X + "/rotate-secret", {"grace_seconds": 2592001}, "grace_seconds"),
    Bad("POST", X + "/rotate-secret", {"grace_seconds": "1h"}, "grace_seconds"),
    Bad("POST", X + "/recover", {}, "since"),
    Bad("POST", X + "/recover", None, "body", IJ),
    Bad("POST", X + "/recover", {"since": "yesterday"}, "since"),
    Bad("POST", X + "/recover", {"since": "2025-01-31T12:00:00"}, "since"),
    Bad("POST", X + "/recover", {"since": "2025-02-30T12:00:00Z"}, "since"),
    Bad("POST", X + "/recover", {"since": "2025-01-31T12:00:00+24:00"}, "since"),
    Bad("POST", X + "/recover", {"since": 1738324800}, "since"),
    Bad("POST", "/v1/events", {**EMIT, "payload": None}, "payload"),
    Bad("POST", "/v1/events", {"account_id": "a", "type": "email.sent"}, "payload"),
    Bad("POST", "/v1/events", {**EMIT, "payload": [1]}, "payload"),
    Bad("POST", "/v1/events", {**EMIT, "payload": {"s": "nul\x00"}}, "payload"),
    Bad("POST", "/v1/events", {**EMIT, "payload": {"k\x00": 1}}, "payload"),
    Bad("POST", "/v1/events", b'{"payload": {"n": 1e999}}', "body", IJ),
    Bad("POST", "/v1/events", DEEP, "body", IJ),
    Bad("POST", "/v1/events", {**EMIT, "type": "email.nope"}, "type", UET),
    Bad("POST", "/v1/events", {**EMIT, "type": 7}, "type"),
    Bad("POST", "/v1/events", {**EMIT, "idempotency_key": ""}, "idempotency_key"),
    Bad("POST", "/v1/events", {**EMIT, "event_type": "email.sent"}, "event_type", UF),
    Bad("GET", "/v1/deliveries", NO_BODY, "status", query={"status": "done"}),
    Bad("GET", "/v1/deliveries", NO_BODY, "endpoint_id", query={"endpoint_id": "7"}),
    Bad("GET", "/v1/deliveries", NO_BODY, "since", query={"since": "2025-13-01T00:00:00Z"}),
    Bad("GET", "/v1/deliveries", NO_BODY, "event_type", query={"event_type": "x" * 201}),
    Bad("GET", "/v1/deliveries/abc", NO_BODY, "id"),
    Bad("GET", "/v1/deliveries/0", NO_BODY, "id"),
    Bad("GET", "/v1/deliveries/-1", NO_BODY, "id"),
    Bad("GET", "/v1/deliveries/1.5", NO_BODY, "id"),
    Bad("GET", "/v1/deliveries/9223372036854775808", NO_BODY, "id"),
    Bad("POST", "/v1/deliveries/1/redeliver", {"now": True}, "now", UF),
    Bad("POST", "/v1/deliveries/1/redeliver", b"[]", "body", IJ),
]


async def test_invalid_requests_are_400s_naming_the_field(api: Api) -> None:
    """Malformed JSON, unknown fields, wrong types, bad ids, times and query parameters each
    answer a documented 400 whose code is stable and whose message starts with the field."""
    for bad in BAD_REQUESTS:
        if isinstance(bad.body, bytes):
            answer = await api.call(bad.method, bad.path, raw=bad.body, query=bad.query)
        else:
            answer = await api.call(bad.method, bad.path, bad.body, query=bad.query)
        assert_error(answer, 400, bad.code, bad.field)
    unknown = await api.call("POST", E, {**NEW, "colour": "red", "zzz": 1})
    assert "colour, zzz" in unknown.json["error"]["message"]
    typed = await api.call("POST", E, {**NEW, "account_id": 5})
    assert typed.json["error"]["message"] == "account_id: must be a string, not integer"

    endpoint = await api.create("acct_v", U)
    path = f"{E}/{endpoint['id']}"
    future = (datetime.now(UTC) + timedelta(days=1)).isoformat()
    checked_by_the_database = [
        Bad("POST", path + "/recover", {"since": future}, "since"),
        Bad("PATCH", path, {"event_types": ["email.nope"]}, "event_types", UET),
        Bad("PATCH", path, {"url": "not a url"}, "url"),
        Bad("PATCH", path, {"url": "https://x", "max_in_flight": 999}, "max_in_flight"),
        Bad("POST", path + "/rotate-secret", {"secret": "whsec_c2hvcnQ="}, "secret"),
    ]
    for bad in checked_by_the_database:
        assert_error(await api.call(bad.method, bad.path, bad.body), 400, bad.code, bad.field)
    assert (await api.ok("GET", path))["url"] == U, "nothing was half-written"


VALID_BODIES: dict[str, dict[str, Any]] = {
    "createEndpoint": NEW,
    "updateEndpoint": {"description": "x"},
    "recoverEndpoint": {"since": "2025-01-01T00:00:00Z"},
    "emitEvent": EMIT,
    "sendTestEvent": {"event_type": "email.sent"},
}


async def test_the_api_takes_exactly_the_documented_fields_and_parameters(api: Api) -> None:
    """Each documented body field and query parameter is read (a value of the wrong type is a
    400 naming it) and an undocumented one is refused as unknown_field."""
    for method, template, operation in operations():
        path = template.replace("{id}", "1" if "deliveries" in template else MISSING_ID)
        path = path.replace("{account_id}", "acct_fields")
        for parameter in operation.get("parameters", []):
            name = resolve(parameter["$ref"][1:])["name"] if "$ref" in parameter else None
            name = name or parameter["name"]
            answer = await api.call(method.upper(), path, query={name: "\x00"})
            assert_error(answer, 400, "invalid_field", name)
        # The probes and the portal's static files ignore a query; the API refuses unknown ones.
        if template not in ("/healthz", "/readyz", "/metrics") and not template.startswith(
            "/portal"
        ):
            answer = await api.call(method.upper(), path, query={"zz_unknown": "1"})
            assert_error(answer, 400, "unknown_field", "zz_unknown")
        if "requestBody" not in operation:
            continue
        content = operation["requestBody"]["content"]["application/json"]
        schema = resolve(content["schema"]["$ref"][1:])
        valid = VALID_BODIES.get(operation["operationId"], {})
        for name in schema["properties"]:
            answer = await api.call(method.upper(), path, {**valid, name: [[]]})
            assert_error(answer, 400, "invalid_field", name)
        answer = await api.call(method.upper(), path, {**valid, "zz_unknown": 1})
        assert_error(answer, 400, "unknown_field", "zz_unknown")


async def test_unknown_ids_are_404s_naming_the_id(api: Api) -> None:
    """Every operation on an endpoint or delivery id that does not exist answers 404 naming id."""
    for method, template, _ in operations():
        if "{id}" not in template:
            continue
        path = template.replace("{id}", "987654321" if "deliveries" in template else MISSING_ID)
        body: Any = NO_BODY
        if template.endswith("/recover"):
            body = {"since": "2025-01-01T00:00:00Z"}
        elif method == "patch":
            body = {"description": "x"}
        elif template.endswith("/test"):
            body = {"event_type": "email.sent"}
        assert_error(await api.call(method.upper(), path, body), 404, "not_found", "id")


async def test_oversized_payloads_and_bodies_are_413s(api: Api, receiver: Receiver) -> None:
    """A payload over max_payload_bytes is a 413 naming payload; a body over the server's limit
    is a 413 naming body, whether its length is announced or it arrives chunked."""
    await api.create("acct_big", receiver.url("/big"))
    big = {"account_id": "acct_big", "type": "email.sent", "payload": {"s": "x" * 300_000}}
    assert_error(await api.call("POST", "/v1/events", big), 413, "payload_too_large", "payload")
    huge = {**big, "payload": {"s": "x" * 700_000}}
    assert_error(await api.call("POST", "/v1/events", huge), 413, "payload_too_large", "body")

    async def chunks() -> AsyncIterator[bytes]:
        yield b'{"account_id": "acct_big", "type": "email.sent", "payload": {"s": "'
        for _ in range(12):
            yield b"x" * 65536
        yield b'"}}'

    async with (
        aiohttp.ClientSession(timeout=HTTP_TIMEOUT) as session,
        session.post(
            api.base + "/v1/events",
            data=chunks(),
            headers={"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"},
        ) as response,
    ):
        answer = Answer(
            "POST",
            "/v1/events",
            response.status,
            response.headers,
            response.content_type,
            await response.text(),
            await response.json(),
        )
    conform(answer)
    assert_error(answer, 413, "payload_too_large", "body")
    assert (await api.ok("GET", "/v1/deliveries", query={"account_id": "acct_big"}))["data"] == []


async def test_a_lost_database_is_a_503_until_it_comes_back(db_url: str) -> None:
    """While the engine's database connections are cut, API calls answer a documented 503
    `unavailable`; once restored, the same call succeeds."""
    async with PgProxy(db_url) as proxy, _engine(proxy.url) as running:
        api = Api(running)
        await api.ok("GET", "/v1/endpoints")
        proxy.cut()
        answer = await api.call("GET", "/v1/endpoints")
        assert_error(answer, 503, "unavailable", None)
        proxy.restore()

        async def back() -> bool:
            return (await api.call("GET", "/v1/endpoints")).status == 200

        await wait_until(back, what="the API answering again")


@contextlib.asynccontextmanager
async def _engine(database_url: str) -> AsyncIterator[RunningEngine]:
    """An in-process engine with a token on ``database_url``; stopped at exit."""
    running = await launch_engine(TEST_SETTINGS.replace(admin_token=TOKEN), database_url)
    try:
        yield running
    finally:
        await running.stop()


async def _nonempty(rows: Awaitable[list[dict[str, Any]]]) -> bool:
    return bool(await rows)


async def _equals(value: Awaitable[int], expected: int) -> bool:
    return await value == expected
