"""maintain_partitions runs per-account retention batch after batch, until one deletes nothing or
the engine stops, and only then the partitions' upkeep, which drops what the purge finds rows by."""

from __future__ import annotations

import asyncio
from typing import Any, cast

from engine.db.queue import DeliveryQueue
from engine.delivery.housekeeping import RETENTION_BATCH, maintain_partitions


class Batches:
    """A store whose purge deletes the given counts in turn (then nothing)."""

    def __init__(self, *deleted: int, stop_after: int | None = None, stop: Any = None) -> None:
        self.deleted = list(deleted)
        self.calls: list[int] = []
        self.order: list[str] = []
        self.stop_after = stop_after
        self.stop = stop

    async def maintain(self) -> dict[str, list[str]]:
        self.order.append("maintain")
        return {"created": [], "dropped": []}

    async def purge_account_retention(self, batch: int) -> int:
        self.calls.append(batch)
        self.order.append("purge")
        if self.stop is not None and len(self.calls) == self.stop_after:
            self.stop.set()
        return self.deleted.pop(0) if self.deleted else 0


async def test_batches_run_until_one_deletes_nothing() -> None:
    """Three batches delete rows, the fourth none: four calls of RETENTION_BATCH rows each."""
    store = Batches(RETENTION_BATCH, RETENTION_BATCH, 3)
    await maintain_partitions(cast(DeliveryQueue, store), asyncio.Event())
    assert store.calls == [RETENTION_BATCH] * 4


async def test_a_stop_ends_the_batches_where_they_are() -> None:
    """With work left, setting stop during the second batch ends the loop after it."""
    stop = asyncio.Event()
    store = Batches(*[RETENTION_BATCH] * 10, stop_after=2, stop=stop)
    await maintain_partitions(cast(DeliveryQueue, store), stop)
    assert len(store.calls) == 2


async def test_the_purge_runs_before_the_partitions_are_maintained() -> None:
    """Every batch comes before the upkeep that drops partitions: two batches, then one upkeep."""
    store = Batches(RETENTION_BATCH)
    await maintain_partitions(cast(DeliveryQueue, store), asyncio.Event())
    assert store.order == ["purge", "purge", "maintain"]


async def test_the_partitions_are_maintained_when_stop_is_already_set() -> None:
    """A stop set before the call skips the purge but not the upkeep (partitions ahead)."""
    stop = asyncio.Event()
    stop.set()
    store = Batches(RETENTION_BATCH)
    await maintain_partitions(cast(DeliveryQueue, store), stop)
    assert store.order == ["maintain"]
