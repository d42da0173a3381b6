"""Retry-After parsing: delta-seconds, HTTP-dates, and the garbage an endpoint may send instead."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from email.utils import format_datetime

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from engine.delivery.retry_after import MAX_RETRY_AFTER_S, parse_retry_after

NOW = datetime(2024, 5, 1, 12, 0, 0, tzinfo=UTC)
# No example database: the tree is shared and the examples are cheap to regenerate.
hyp = settings(database=None, max_examples=300)


def test_cap_is_seven_days() -> None:
    """The cap on a requested delay is seven days in seconds."""
    assert MAX_RETRY_AFTER_S == 604_800.0


@pytest.mark.parametrize(
    ("value", "expected"),
    [("0", 0.0), ("120", 120.0), (" 120 ", 120.0), ("007", 7.0), ("604800", 604_800.0)],
)
def test_delta_seconds(value: str, expected: float) -> None:
    """A non-negative integer is that many seconds, surrounding whitespace ignored."""
    assert parse_retry_after(value) == expected


@pytest.mark.parametrize("value", ["604801", "99999999999999999999999999999999"])
def test_huge_delta_is_capped(value: str) -> None:
    """A delay beyond seven days, however many digits, is capped at seven days."""
    assert parse_retry_after(value) == MAX_RETRY_AFTER_S


@hyp
@given(st.integers(min_value=0, max_value=10**40))
def test_any_non_negative_integer_is_within_cap(seconds: int) -> None:
    """Every non-negative integer string parses to a float in [0, cap]."""
    result = parse_retry_after(str(seconds))
    assert isinstance(result, float)
    assert 0.0 <= result <= MAX_RETRY_AFTER_S
    assert result == min(float(seconds), MAX_RETRY_AFTER_S)


@pytest.mark.parametrize(
    "value",
    [
        None,
        "",
        "   ",
        "-1",
        "-0",
        "+5",
        "1.5",
        "1e3",
        "0x10",
        "NaN",
        "nan",
        "inf",
        "-inf",
        "Infinity",
        "soon",
        "1 2",
        "\u0661\u0662",  # Arabic-Indic digits: str.isdigit() says yes, RFC 9110 says no
        "1" * 65,
        "Sun, 06 Nov 1994 08:49:37 GMT" + " " * 40 + "x",
        "Sun, 32 Nov 1994 08:49:37 GMT",
        "Sun, 06 Nov 1994 25:49:37 GMT",
        "01 Jan 99999999999999999999 00:00:00 GMT",
        "01 Jan 2020 00:00:00 +9999",
    ],
)
def test_malformed_values_are_none(value: str | None) -> None:
    """Missing, negative, fractional, non-finite, overlong or invalid values give None."""
    assert parse_retry_after(value, now=NOW) is None


def test_future_http_date() -> None:
    """An HTTP-date in the future is the seconds from now until then."""
    assert parse_retry_after("Wed, 01 May 2024 12:02:30 GMT", now=NOW) == 150.0


def test_past_http_date_is_zero() -> None:
    """An HTTP-date in the past means retry now: 0.0."""
    assert parse_retry_after("Sun, 06 Nov 1994 08:49:37 GMT", now=NOW) == 0.0


def test_far_future_http_date_is_capped() -> None:
    """An HTTP-date more than seven days away is capped at seven days."""
    assert parse_retry_after("Fri, 31 Dec 9999 23:59:59 GMT", now=NOW) == MAX_RETRY_AFTER_S


@pytest.mark.parametrize(
    "value",
    [
        "Wednesday, 01-May-24 12:02:30 GMT",  # RFC 850, obsolete but still to be accepted
        "Wed May  1 12:02:30 2024",  # asctime, no zone: GMT by definition
        "Wed, 01 May 2024 14:02:30 +0200",  # not an HTTP-date, but the instant is unambiguous
    ],
)
def test_other_date_formats(value: str) -> None:
    """The obsolete HTTP-date formats, and explicit offsets, resolve to the same instant."""
    assert parse_retry_after(value, now=NOW) == 150.0


def test_naive_now_is_taken_as_utc() -> None:
    """A naive now is read as UTC rather than failing to compare with the GMT date."""
    naive = NOW.replace(tzinfo=None)
    assert parse_retry_after("Wed, 01 May 2024 12:02:30 GMT", now=naive) == 150.0


def test_default_now_is_the_current_time() -> None:
    """Without now, a date a minute ahead of the clock gives about 60 seconds."""
    ahead = format_datetime(datetime.now(UTC) + timedelta(seconds=60), usegmt=True)
    result = parse_retry_after(ahead)
    assert result is not None
    assert 55.0 <= result <= 60.0


@hyp
@given(st.datetimes(min_value=datetime(1900, 1, 1), timezones=st.just(UTC)))
def test_any_http_date_is_within_cap(moment: datetime) -> None:
    """Every well-formed HTTP-date parses to the clamped distance from now."""
    result = parse_retry_after(format_datetime(moment, usegmt=True), now=NOW)
    expected = (moment.replace(microsecond=0) - NOW).total_seconds()
    assert result == max(0.0, min(expected, MAX_RETRY_AFTER_S))


@hyp
@given(st.text(max_size=80))
def test_never_raises(value: str) -> None:
    """Any text gives None or a float in [0, cap], never an exception."""
    result = parse_retry_after(value, now=NOW)
    assert result is None or 0.0 <= result <= MAX_RETRY_AFTER_S
