"""How clients name rows and pages: endpoint ids, delivery ids, page sizes and page cursors.

Parsed once, here, for the store, the admin API and the CLI alike. Each parser raises
:class:`InvalidInput` naming the field (``"<field>: <reason>"``); the API and the CLI answer it in
their own shapes. Pure: no I/O.

A cursor encodes the keyset position of a list (``created_at`` and id of the last row), so the
next page costs the same however deep it is, and rows written meanwhile neither repeat nor shift it.
"""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Callable
from datetime import UTC, datetime
from typing import TypeVar
from uuid import UUID

from engine.errors import InvalidInput

K = TypeVar("K")
MAX_BIGINT = 2**63 - 1  # Postgres bigint: delivery ids
MAX_PAGE = 1000
DEFAULT_PAGE = 50
# The hyphenated form only, the one the API's document (format: uuid) and every output show.
UUID_PATTERN = re.compile(r"[0-9a-fA-F]{8}-(?:[0-9a-fA-F]{4}-){3}[0-9a-fA-F]{12}")
# ASCII digits, at most 19 of them: int() would also take '²', '٣', '1_0' and thousands of digits.
INTEGER = re.compile(r"-?[0-9]{1,19}")
ENDPOINTS = "e"  # the kinds of list a cursor belongs to
DELIVERIES = "d"


def parse_uuid(text: str, field: str) -> UUID:
    """A UUID in its hyphenated form, like an endpoint id."""
    if UUID_PATTERN.fullmatch(text) is None:
        raise InvalidInput(
            f"{field}: must be a UUID like 123e4567-e89b-12d3-a456-426614174000", field=field
        )
    return UUID(text)


def parse_delivery_id(text: str, field: str) -> int:
    """A delivery id: an integer from 1 to the largest bigint."""
    if INTEGER.fullmatch(text) is None or not 0 < int(text) <= MAX_BIGINT:
        raise InvalidInput(
            f"{field}: must be a delivery id, an integer from 1 to {MAX_BIGINT}", field=field
        )
    return int(text)


def check_page_size(limit: int) -> int:
    """Page sizes are 1..MAX_PAGE; the store asks for one more row to know if a next page exists."""
    if not 1 <= limit <= MAX_PAGE:
        raise InvalidInput(f"limit: must be an integer from 1 to {MAX_PAGE}", field="limit")
    return limit


def parse_page_size(text: str) -> int:
    """A page size written as text (a query parameter, a flag)."""
    if INTEGER.fullmatch(text) is None:
        raise InvalidInput(f"limit: must be an integer from 1 to {MAX_PAGE}", field="limit")
    return check_page_size(int(text))


def encode_cursor(kind: str, created_at: datetime, key: UUID | int) -> str:
    """The opaque cursor after a row ordered by (created_at, key) in a list of ``kind``."""
    raw = f"{kind}|{created_at.isoformat()}|{key}".encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_endpoint_cursor(cursor: str) -> tuple[datetime, UUID]:
    """(created_at, id) of a cursor of the endpoint list."""
    return _decode(ENDPOINTS, cursor, lambda key: parse_uuid(key, "cursor"))


def decode_delivery_cursor(cursor: str) -> tuple[datetime, int]:
    """(created_at, delivery id) of a cursor of the delivery log."""
    return _decode(DELIVERIES, cursor, lambda key: parse_delivery_id(key, "cursor"))


def _decode(kind: str, cursor: str, parse_key: Callable[[str], K]) -> tuple[datetime, K]:
    """A cursor made by :func:`encode_cursor` for ``kind``, whose time Python holds in UTC (the
    store compares it with timestamptz columns)."""
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        found, created, key = raw.split("|")
        created_at = datetime.fromisoformat(created)
        created_at.astimezone(UTC)
        parsed = parse_key(key)
    except (ValueError, binascii.Error, UnicodeDecodeError, OverflowError, InvalidInput):
        raise _bad_cursor() from None
    if found != kind or created_at.tzinfo is None:
        raise _bad_cursor()
    return created_at, parsed


def _bad_cursor() -> InvalidInput:
    return InvalidInput(
        "cursor: is not a cursor of this list (pass next_cursor of the previous page)",
        field="cursor",
    )
