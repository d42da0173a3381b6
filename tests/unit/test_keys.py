"""The one parser of ids, page sizes and cursors (engine/db/keys.py); endpoint option defaults."""

from __future__ import annotations

import base64
from datetime import UTC, datetime
from uuid import UUID

import pytest

from engine.db import keys
from engine.errors import InvalidInput
from engine.models import DEFAULT_MAX_IN_FLIGHT, ENDPOINT_DEFAULTS, EndpointOptions, Ordering

ENDPOINT_ID = UUID("123e4567-e89b-12d3-a456-426614174000")
CREATED_AT = datetime(2025, 1, 31, 12, 0, tzinfo=UTC)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("0", None),
        ("1", 1),
        (str(keys.MAX_BIGINT), keys.MAX_BIGINT),
        (str(keys.MAX_BIGINT + 1), None),
        ("-1", None),
        ("٣", None),
        ("1_0", None),
        (" 1", None),
    ],
)
def test_delivery_ids_are_1_to_the_largest_bigint(text: str, expected: int | None) -> None:
    """A delivery id is ASCII digits from 1 to 2**63-1; anything else is refused, naming the id."""
    if expected is not None:
        assert keys.parse_delivery_id(text, "id") == expected
        return
    with pytest.raises(InvalidInput, match=r"^id: must be a delivery id") as caught:
        keys.parse_delivery_id(text, "id")
    assert caught.value.field == "id"


@pytest.mark.parametrize(
    ("text", "accepted"),
    [
        (str(ENDPOINT_ID), True),
        (str(ENDPOINT_ID).upper(), True),
        (ENDPOINT_ID.hex, False),
        (f"{{{ENDPOINT_ID}}}", False),
        (ENDPOINT_ID.urn, False),
        (str(ENDPOINT_ID)[:-1], False),
    ],
)
def test_uuids_are_taken_in_their_hyphenated_form_only(text: str, accepted: bool) -> None:
    """Only the hyphenated form the document and every output show is an endpoint id."""
    if accepted:
        assert keys.parse_uuid(text, "endpoint_id") == ENDPOINT_ID
        return
    with pytest.raises(InvalidInput, match=r"^endpoint_id: must be a UUID"):
        keys.parse_uuid(text, "endpoint_id")


@pytest.mark.parametrize(
    ("limit", "accepted"),
    [(0, False), (1, True), (keys.MAX_PAGE, True), (keys.MAX_PAGE + 1, False)],
)
def test_page_sizes_are_1_to_max_page(limit: int, accepted: bool) -> None:
    """A page holds 1 to MAX_PAGE rows, given as a number or as text."""
    if accepted:
        assert keys.check_page_size(limit) == limit
        assert keys.parse_page_size(str(limit)) == limit
        return
    refusal = r"^limit: must be an integer from 1 to 1000$"
    with pytest.raises(InvalidInput, match=refusal):
        keys.check_page_size(limit)
    with pytest.raises(InvalidInput, match=refusal):
        keys.parse_page_size(str(limit))


def test_cursors_round_trip_within_their_own_list() -> None:
    """A cursor decodes to the position it was made from, in the list it was made for only."""
    endpoints = keys.encode_cursor(keys.ENDPOINTS, CREATED_AT, ENDPOINT_ID)
    deliveries = keys.encode_cursor(keys.DELIVERIES, CREATED_AT, keys.MAX_BIGINT)
    assert keys.decode_endpoint_cursor(endpoints) == (CREATED_AT, ENDPOINT_ID)
    assert keys.decode_delivery_cursor(deliveries) == (CREATED_AT, keys.MAX_BIGINT)
    with pytest.raises(InvalidInput, match=r"^cursor: is not a cursor of this list"):
        keys.decode_endpoint_cursor(deliveries)
    with pytest.raises(InvalidInput, match=r"^cursor: is not a cursor of this list"):
        keys.decode_delivery_cursor(endpoints)


@pytest.mark.parametrize(
    "raw",
    [
        f"d|{CREATED_AT.isoformat()}|0",  # delivery id below 1
        f"d|{CREATED_AT.isoformat()}|{keys.MAX_BIGINT + 1}",  # above the largest bigint
        f"d|{CREATED_AT.isoformat()}| 12",  # int() would take it
        "d|2025-01-31T12:00:00|12",  # no offset
        "d|0001-01-01T00:00:00+05:00|12",  # before the first instant Python holds in UTC
        "d|2025-01-31T12:00:00+00:00|12|x",
        "xyz",
    ],
)
def test_cursors_the_store_could_not_use_are_refused(raw: str) -> None:
    """A cursor with a key out of range, a time without offset or out of range, or garbage is
    refused as a cursor, never passed on to the database."""
    cursor = base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=") if "|" in raw else raw
    with pytest.raises(InvalidInput, match=r"^cursor: is not a cursor of this list") as caught:
        keys.decode_delivery_cursor(cursor)
    assert caught.value.field == "cursor"


def test_endpoint_options_not_given_take_the_defaults() -> None:
    """A new endpoint takes the default of every setting not given, and only of those."""
    given = EndpointOptions(max_in_flight=3, rate_limit_per_s=0.0)
    assert given.given() == {"max_in_flight": 3, "rate_limit_per_s": 0.0}
    assert given.with_defaults() == EndpointOptions(
        description="",
        event_types=("*",),
        max_in_flight=3,
        ordering=Ordering.DISPATCH,
        rate_limit_per_s=0.0,
        headers={},
    )
    assert EndpointOptions().with_defaults() == ENDPOINT_DEFAULTS
    assert ENDPOINT_DEFAULTS.max_in_flight == DEFAULT_MAX_IN_FLIGHT
    assert EndpointOptions().given() == {}
