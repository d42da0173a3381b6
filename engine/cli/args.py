"""Argument types of the CLI. argparse reports their ArgumentTypeError as ``--flag: message``."""

from __future__ import annotations

import argparse
import re
from datetime import UTC, datetime, timedelta
from uuid import UUID

from engine.db import keys
from engine.errors import InvalidInput
from engine.portal_tokens import check_ttl

RELATIVE_TIME = re.compile(r"^\s*(\d{1,9})\s*([smhdw])\s*$")
UNIT_S = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def endpoint_id(text: str) -> UUID:
    try:
        return keys.parse_uuid(text, "endpoint")
    except InvalidInput:
        raise argparse.ArgumentTypeError(f"{text!r} is not an endpoint id (a UUID)") from None


def delivery_id(text: str) -> int:
    try:
        return keys.parse_delivery_id(text, "delivery")
    except InvalidInput:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a delivery id (a positive integer)"
        ) from None


def page_size(text: str) -> int:
    try:
        return keys.parse_page_size(text)
    except InvalidInput:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a number from 1 to {keys.MAX_PAGE}"
        ) from None


def duration(text: str) -> timedelta:
    """``0`` or a count with a unit: 90s, 15m, 2h, 1d, 1w."""
    match = RELATIVE_TIME.match(text)
    if text.strip() == "0":
        return timedelta(0)
    if match is None:
        raise argparse.ArgumentTypeError(f"{text!r} is not a duration (like 90s, 15m, 2h, 1d)")
    try:
        return timedelta(seconds=int(match[1]) * UNIT_S[match[2]])
    except OverflowError:  # argparse reports ValueError, not this: it would be a traceback
        raise argparse.ArgumentTypeError(f"{text!r} is too long a duration") from None


def portal_ttl(text: str) -> timedelta:
    """A portal token's lifetime: a duration within the bounds of engine.portal_tokens."""
    try:
        return check_ttl(duration(text))
    except InvalidInput as exc:
        raise argparse.ArgumentTypeError(f"{text!r}: {str(exc).removeprefix('ttl: ')}") from None


def since(text: str) -> datetime:
    """A point in time: ISO 8601 (UTC unless it has an offset) or a duration ago (15m, 2h, 1d)."""
    if RELATIVE_TIME.match(text):
        try:
            return datetime.now(UTC) - duration(text)
        except OverflowError:
            raise argparse.ArgumentTypeError(f"{text!r} is too far back") from None
    try:
        value = datetime.fromisoformat(text.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a time (use ISO 8601 like 2025-01-31T12:00Z, or 15m, 2h, 1d)"
        ) from None
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)


def words(text: str) -> list[str]:
    """A comma-separated list, blanks dropped."""
    return [w.strip() for w in text.split(",") if w.strip()]


def seconds(text: str) -> float:
    """A positive number of seconds."""
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not 0 < value < float("inf"):
        raise argparse.ArgumentTypeError(f"{text!r} is not a positive number of seconds")
    return value


def header(text: str) -> tuple[str, str]:
    """``Name: value`` (or ``Name=value``): one custom header. The database checks both."""
    name, sep, value = text.partition(":")
    if not sep:
        name, sep, value = text.partition("=")
    if not sep or not name.strip():
        raise argparse.ArgumentTypeError("is not a header (use 'Name: value')")
    return name.strip(), value.strip()


def durations(text: str) -> tuple[timedelta, ...]:
    """A comma-separated retry schedule, each delay as :func:`duration` reads it; empty for no
    retries."""
    return tuple(duration(w) for w in words(text))
