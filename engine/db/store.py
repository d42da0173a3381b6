"""One door to every call of the engine's SQL, for the CLI, the admin API and the tests.

The delivery stage is given the same object but types it as the :class:`DeliveryQueue` it needs.
"""

from __future__ import annotations

from engine.db.erasure import Erasure
from engine.db.queue import DeliveryQueue
from engine.db.reads import DeliveryLogReads
from engine.db.writes import AdminWrites


class Store(DeliveryQueue, AdminWrites, DeliveryLogReads, Erasure):
    """Every typed call of ``queries.sql`` through one pool owned by the caller."""
