"""Strict parsing of admin API requests: JSON bodies, query strings and path ids.

Anything the document (engine/admin/openapi.json) does not allow is refused here, before the
database sees it, with an :class:`ApiError` naming the field: unknown fields, wrong JSON types,
values out of range, malformed ids and times. Text is also refused where Postgres could not store it
(NUL, lone surrogates), so such input is a 400, never a 500; a valid time whose instant lies outside
Python's years 1 to 9999 in UTC is clamped into them (see :func:`parse_time`). The database then
checks what only it knows (URLs, event types, payload size).
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Collection, Mapping
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar
from uuid import UUID

from aiohttp import web
from multidict import MultiMapping

from engine.admin.server import ApiError
from engine.db import keys
from engine.errors import InvalidInput

T = TypeVar("T")
# RFC 3339 date-time (the JSON Schema "date-time" format), matched after upper-casing "t" and "z".
DATE_TIME = re.compile(
    r"[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}(?:\.[0-9]+)?"
    r"(?:Z|[+-][0-9]{2}:[0-9]{2})"
)
EARLIEST = datetime.min.replace(tzinfo=UTC)  # asyncpg sends it as -infinity
LATEST = datetime.max.replace(tzinfo=UTC)  # and this as infinity
JSON_TYPES = {dict: "object", list: "array", str: "string", bool: "boolean", type(None): "null"}


def invalid(field: str, reason: str, code: str = "invalid_field") -> ApiError:
    """A 400 naming ``field``: the message is ``"<field>: <reason>"``."""
    return ApiError(400, code, f"{field}: {reason}", field=field)


def need(value: T | None, field: str) -> T:
    """``value``, or a 400 saying that ``field`` is required."""
    if value is None:
        raise invalid(field, "is required")
    return value


def shown(name: str) -> str:
    """A client-sent name made safe to echo: printable ASCII escapes, at most 100 characters."""
    return json.dumps(name[:100])[1:-1]


def check_text(value: str, field: str) -> str:
    """Refuse text Postgres cannot store: NUL characters and lone surrogates (invalid UTF-8)."""
    if "\x00" in value:
        raise invalid(field, "must not contain NUL (\\u0000) characters")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise invalid(field, "must be valid Unicode (it contains a lone surrogate)") from None
    return value


def refused(exc: InvalidInput) -> ApiError:
    """The 400 of a value :mod:`engine.db.keys` refused; its message starts with the field."""
    return ApiError(400, "invalid_field", str(exc), field=exc.field)


def parse_uuid(text: str, field: str) -> UUID:
    try:
        return keys.parse_uuid(text, field)
    except InvalidInput as exc:
        raise refused(exc) from None


def parse_time(text: str, field: str) -> datetime:
    """An RFC 3339 date-time with its offset (``Z`` or ``+hh:mm``), kept in asyncpg's range.

    On 0001-01-01 a positive offset, and on 9999-12-31 a negative one, can put the instant
    outside the years Python holds in UTC (``0001-01-01T00:00:00+05:00``). Such a time is valid,
    so it is clamped to the first or last instant Python holds, which asyncpg sends as -infinity or
    infinity: as a lower bound it selects the same rows.
    """
    upper = text.upper()
    if DATE_TIME.fullmatch(upper) is None:
        raise invalid(field, "must be an RFC 3339 date-time, like 2025-01-31T12:00:00Z")
    try:
        value = datetime.fromisoformat(upper)
    except ValueError as exc:
        raise invalid(field, f"is not a valid date-time ({exc})") from None
    try:
        value.astimezone(UTC)
    except OverflowError:
        return EARLIEST if value.year == 1 else LATEST
    return value


def endpoint_id(request: web.Request) -> UUID:
    """The ``{id}`` of an endpoint route."""
    return parse_uuid(request.match_info["id"], "id")


def delivery_id(request: web.Request) -> int:
    """The ``{id}`` of a delivery route: a positive 64-bit integer."""
    try:
        return keys.parse_delivery_id(request.match_info["id"], "id")
    except InvalidInput as exc:
        raise refused(exc) from None


async def json_body(
    request: web.Request, fields: Collection[str], *, optional: bool = False
) -> Body:
    """The request's JSON object, refusing fields other than ``fields``.

    With ``optional``, an empty body counts as ``{}``. A body over the app's ``client_max_size``
    is a 413 ``payload_too_large`` naming ``body``.
    """
    limit = request.client_max_size
    too_large = ApiError(
        413, "payload_too_large", f"body: is over the limit of {limit} bytes", field="body"
    )
    if request.content_length is not None and request.content_length > limit:
        raise too_large
    try:
        raw = await request.read()
    except web.HTTPRequestEntityTooLarge:
        raise too_large from None
    if not raw.strip():
        if optional:
            return Body({})
        raise invalid("body", "a JSON object is required", code="invalid_json")
    try:
        value = json.loads(raw.decode("utf-8"), parse_constant=_no_constant, parse_float=_float)
    except UnicodeDecodeError:
        raise invalid("body", "is not UTF-8", code="invalid_json") from None
    except RecursionError:
        raise invalid("body", "is nested too deeply", code="invalid_json") from None
    except ValueError as exc:
        raise invalid("body", f"is not valid JSON ({exc})", code="invalid_json") from None
    if not isinstance(value, dict):
        raise invalid("body", f"must be a JSON object, not {_type(value)}", code="invalid_json")
    unknown = sorted(shown(name) for name in value if name not in fields)
    if unknown:
        raise invalid(
            unknown[0],
            f"unknown field{'s' * (len(unknown) > 1)} {', '.join(unknown[:10])};"
            f" allowed: {', '.join(fields) or 'none'}",
            code="unknown_field",
        )
    return Body(value)


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"number {text[:50]} is out of range")
    return value


def _type(value: object) -> str:
    if isinstance(value, int | float) and not isinstance(value, bool):
        return "integer" if isinstance(value, int) else "number"
    return JSON_TYPES.get(type(value), type(value).__name__)


class Body:
    """A request's JSON object; each getter returns None when its field is absent."""

    def __init__(self, data: Mapping[str, Any]) -> None:
        self._data = data

    def __len__(self) -> int:
        return len(self._data)

    def has(self, name: str) -> bool:
        return name in self._data

    def _get(self, name: str, expected: str, *, nullable: bool = False) -> Any:
        value = self._data.get(name)
        if value is None and name in self._data and not nullable:
            raise invalid(name, f"must be {expected}, not null")
        return value

    def text(self, name: str, *, max_len: int, min_len: int = 0) -> str | None:
        value = self._get(name, "a string")
        if value is None:
            return None
        if not isinstance(value, str):
            raise invalid(name, f"must be a string, not {_type(value)}")
        if not min_len <= len(value) <= max_len:
            raise invalid(name, f"must be {min_len} to {max_len} characters long")
        return check_text(value, name)

    def choice(self, name: str, choices: Collection[str]) -> str | None:
        value = self._get(name, "a string")
        if value is None:
            return None
        if not isinstance(value, str):
            raise invalid(name, f"must be a string, not {_type(value)}")
        if value not in choices:
            raise invalid(name, f"must be one of {', '.join(choices)}")
        return value

    def texts(self, name: str, *, max_items: int, max_len: int) -> list[str] | None:
        value = self._get(name, "an array of strings")
        if value is None:
            return None
        if not isinstance(value, list):
            raise invalid(name, f"must be an array of strings, not {_type(value)}")
        if not 1 <= len(value) <= max_items:
            raise invalid(name, f"must have 1 to {max_items} items")
        for item in value:
            if not isinstance(item, str):
                raise invalid(name, f"must be an array of strings, not of {_type(item)}")
            if not 1 <= len(item) <= max_len:
                raise invalid(name, f"items must be 1 to {max_len} characters long")
            check_text(item, name)
        return value

    def integer(self, name: str, low: int, high: int) -> int | None:
        value = self._get(name, "an integer")
        if value is None:
            return None
        # JSON Schema counts 2.0 as an integer; Python's json reads it as a float.
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        if not isinstance(value, int) or isinstance(value, bool):
            raise invalid(name, f"must be an integer, not {_type(value)}")
        if not low <= value <= high:
            raise invalid(name, f"must be between {low} and {high}")
        return value

    def number(self, name: str, low: float, high: float, *, nullable: bool = False) -> float | None:
        value = self._get(name, "a number", nullable=nullable)
        if value is None:
            return None
        if not isinstance(value, int | float) or isinstance(value, bool):
            raise invalid(name, f"must be a number, not {_type(value)}")
        if not low <= value <= high:
            raise invalid(name, f"must be between {low:g} and {high:g}")
        return float(value)

    def json_object(self, name: str) -> dict[str, Any] | None:
        """A JSON object of any content, whose every key and string Postgres can store."""
        value = self._get(name, "an object")
        if value is None:
            return None
        if not isinstance(value, dict):
            raise invalid(name, f"must be an object, not {_type(value)}")
        stack: list[Any] = [value]
        while stack:
            item = stack.pop()
            if isinstance(item, str):
                check_text(item, name)
            elif isinstance(item, dict):
                for key, inner in item.items():
                    check_text(key, name)
                    stack.append(inner)
            elif isinstance(item, list):
                stack.extend(item)
        return value

    def is_null(self, name: str) -> bool:
        """Whether ``name`` is given as JSON null."""
        return name in self._data and self._data[name] is None

    def string_map(self, name: str, *, max_items: int) -> dict[str, str] | None:
        """An object of strings (custom headers), at most ``max_items`` of them; the database
        checks the names and values themselves."""
        value = self._get(name, "an object")
        if value is None:
            return None
        if not isinstance(value, dict):
            raise invalid(name, f"must be an object, not {_type(value)}")
        if len(value) > max_items:
            raise invalid(name, f"must have at most {max_items} entries")
        for key, item in value.items():
            if not isinstance(item, str):
                raise invalid(name, f"values must be strings, not {_type(item)}")
            check_text(key, name)
            check_text(item, name)
        return value

    def durations(self, name: str, *, max_items: int, max_s: float) -> tuple[timedelta, ...] | None:
        """An array of durations in seconds, each from 0 to ``max_s``."""
        value = self._get(name, "an array of numbers")
        if value is None:
            return None
        if not isinstance(value, list):
            raise invalid(name, f"must be an array of numbers, not {_type(value)}")
        if len(value) > max_items:
            raise invalid(name, f"must have at most {max_items} items")
        for item in value:
            if not isinstance(item, int | float) or isinstance(item, bool):
                raise invalid(name, f"must be an array of numbers, not of {_type(item)}")
            if not 0 <= item <= max_s:
                raise invalid(name, f"items must be between 0 and {max_s:g} seconds")
        return tuple(timedelta(seconds=item) for item in value)

    def time(self, name: str) -> datetime | None:
        value = self._get(name, "a date-time string")
        if value is None:
            return None
        if not isinstance(value, str):
            raise invalid(name, f"must be a date-time string, not {_type(value)}")
        return parse_time(value, name)


def no_query(request: web.Request) -> None:
    """Refuse any query parameter: the route takes none."""
    Query(request, ())


class Query:
    """A request's query string: every parameter known to the route, each given at most once."""

    def __init__(self, request: web.Request, names: Collection[str]) -> None:
        query: MultiMapping[str] = request.query
        unknown = sorted({shown(name) for name in query if name not in names})
        if unknown:
            raise invalid(
                unknown[0],
                f"unknown query parameter{'s' * (len(unknown) > 1)} {', '.join(unknown[:10])};"
                f" allowed: {', '.join(names) or 'none'}",
                code="unknown_field",
            )
        for name in names:
            if len(query.getall(name, [])) > 1:
                raise invalid(name, "must be given at most once")
        self._query = query

    def text(self, name: str, *, max_len: int) -> str | None:
        value = self._query.get(name)
        if value is None:
            return None
        if not 1 <= len(value) <= max_len:
            raise invalid(name, f"must be 1 to {max_len} characters long")
        return check_text(value, name)

    def boolean(self, name: str) -> bool | None:
        value = self._query.get(name)
        if value is None:
            return None
        if value not in ("true", "false"):
            raise invalid(name, "must be true or false")
        return value == "true"

    def limit(self) -> int:
        value = self._query.get("limit")
        if value is None:
            return keys.DEFAULT_PAGE
        try:
            return keys.parse_page_size(value)
        except InvalidInput as exc:
            raise refused(exc) from None

    def cursor(self) -> str | None:
        """The page cursor as given; the store decodes it, refusing one of another list."""
        return self.text("cursor", max_len=1000)

    def uuid(self, name: str) -> UUID | None:
        value = self._query.get(name)
        return parse_uuid(value, name) if value is not None else None

    def time(self, name: str) -> datetime | None:
        value = self._query.get(name)
        return parse_time(value, name) if value is not None else None

    def choice(self, name: str, choices: Collection[str]) -> str | None:
        value = self._query.get(name)
        if value is not None and value not in choices:
            raise invalid(name, f"must be one of {', '.join(choices)}")
        return value
