"""Reading a receiver's ``Retry-After`` header. Pure: no I/O.

The retry schedule itself, and clamping a requested delay to it, live in SQL (DESIGN §7): this
module only turns the header into seconds. The header is untrusted input from any endpoint, so
parsing never raises; an unusable value means "no preference" and the schedule decides.
"""

from __future__ import annotations

from datetime import UTC, datetime
from email.utils import parsedate_to_datetime

# An upper bound so a huge delta cannot overflow anything downstream; SQL clamps much tighter.
MAX_RETRY_AFTER_S = 7 * 24 * 3600.0
# Longer than any HTTP-date or sane delta-seconds; longer values are rejected unparsed.
_MAX_VALUE_CHARS = 64


def parse_retry_after(value: str | None, *, now: datetime | None = None) -> float | None:
    """Return the delay a ``Retry-After`` value asks for, in seconds within [0, 7 days].

    Accepts delta-seconds (ASCII digits only, per RFC 9110) or an HTTP-date, where a date in the
    past means 0.0. Returns None for a missing, empty, negative, fractional, non-finite, overlong
    or otherwise malformed value. ``now`` (default: the current time) anchors HTTP-dates; a naive
    datetime, here or in the header, is taken as UTC since HTTP-dates are always GMT.
    """
    if value is None:
        return None
    text = value.strip()
    if not text or len(text) > _MAX_VALUE_CHARS:
        return None
    if text.isascii() and text.isdigit():
        return min(float(int(text)), MAX_RETRY_AFTER_S)
    try:
        when = parsedate_to_datetime(text)
    except (ValueError, OverflowError):
        # ValueError for garbage or out-of-range fields; OverflowError when a numeric field has
        # more digits than a C long (e.g. year 99999999999999999999) reaches datetime().
        return None
    reference = datetime.now(UTC) if now is None else now
    delay_s = (_as_utc(when) - _as_utc(reference)).total_seconds()
    return max(0.0, min(delay_s, MAX_RETRY_AFTER_S))


def _as_utc(moment: datetime) -> datetime:
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment
