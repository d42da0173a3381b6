"""Erasure of a recipient's address and per-account retention: the operator's privacy calls."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from engine.db.pool import Gateway


@dataclass(frozen=True, slots=True)
class ErasureRecord:
    """What one erasure changed, as ``webhooks.erasures`` keeps it (never the address)."""

    id: int
    account_id: str
    erased_at: datetime
    events: int
    deliveries: int
    attempts: int
    outcomes: int
    idempotency_keys: int


class Erasure(Gateway):
    """``webhooks.erase_recipient`` and ``webhooks.set_account_retention``."""

    async def erase_recipient(self, account_id: str, email: str) -> ErasureRecord:
        """Redact ``email`` from the account's stored data in one transaction; returns the
        erasure's record. Bad input raises InvalidInput naming ``account_id`` or ``email``."""
        rows = await self._fetch("erase_recipient", account_id, email)
        return ErasureRecord(**dict(rows[0]))

    async def set_account_retention(self, account_id: str, retention: timedelta | None) -> None:
        """Keep the account's history for ``retention`` (shorter than the global one), or follow
        the global retention again (None)."""
        await self._fetchval("set_account_retention", account_id, retention)
