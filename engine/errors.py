"""The engine's error tree. The docstring of each class is its default message.

SQL functions raise project SQLSTATEs (``WH001``..); :func:`from_sqlstate` maps them to these
classes by code and column, never by message text.
"""

from __future__ import annotations


class EngineError(Exception):
    """The webhook engine failed."""

    def __init__(self, message: str | None = None, *, field: str | None = None) -> None:
        super().__init__(message or (self.__doc__ or "").strip())
        self.field = field


class ConfigError(EngineError):
    """The configuration is invalid."""


class StoreError(EngineError):
    """The database refused or failed an operation."""


class InvalidInput(StoreError):
    """A field is invalid."""


class UnknownEventType(InvalidInput):
    """The event type is not in webhooks.event_types."""


class PayloadTooLarge(InvalidInput):
    """The payload is over webhooks.settings.max_payload_bytes."""


class NotFound(StoreError):
    """No such object."""


class UnknownEndpoint(NotFound):
    """No such endpoint."""


class UnknownDelivery(NotFound):
    """No such delivery."""


class Conflict(StoreError):
    """The operation conflicts with the object's state."""


class EndpointDisabled(Conflict):
    """The endpoint is disabled."""


class EventExpired(Conflict):
    """The event has passed retention."""


class MigrationError(StoreError):
    """The database schema cannot be migrated."""


class SchemaOutdated(StoreError):
    """The database schema is behind this engine; run `misar-webhooks migrate`."""


class EmbeddedPostgresError(EngineError):
    """The embedded Postgres could not be started."""


SQLSTATE_ERRORS: dict[str, type[StoreError]] = {
    "WH001": InvalidInput,
    "WH002": UnknownEventType,
    "WH003": PayloadTooLarge,
    "WH004": UnknownEndpoint,
    "WH005": UnknownDelivery,
    "WH006": EndpointDisabled,
    "WH007": EventExpired,
}


def from_sqlstate(sqlstate: str | None, message: str, column: str | None) -> StoreError | None:
    """Map a project SQLSTATE to its error, or None when the code is not ours."""
    cls = SQLSTATE_ERRORS.get(sqlstate or "")
    if cls is None:
        return None
    return cls(message, field=column)
