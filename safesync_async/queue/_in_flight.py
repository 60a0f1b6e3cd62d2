"""The entries a run holds: read or claimed and not finished, queued for the workers,
bounded by the read-ahead limit, each with the time its idle time was last reset."""

from __future__ import annotations

import asyncio
import time

from .._failpoints import failpoint
from ._statistics import ConsumerRecorder
from ._streams import Delivery

__all__ = ["InFlight"]


class InFlight:
    """Held entries and the queue workers take them from (``None`` tells a worker to
    stop). At most ``limit`` entries are held at once."""

    def __init__(self, limit: int, recorder: ConsumerRecorder) -> None:
        self.limit = limit
        self._recorder = recorder
        self._work: asyncio.Queue[Delivery | None] = asyncio.Queue()
        self._slots_freed = asyncio.Event()
        # id -> time.monotonic() when its idle time was last reset (read, claim, touch)
        self._held: dict[str, float] = {}

    def __len__(self) -> int:
        return len(self._held)

    def __contains__(self, entry_id: object) -> bool:
        return entry_id in self._held

    def add(self, deliveries: list[Delivery]) -> None:
        """Hold fresh deliveries and queue them for the workers."""
        if deliveries:
            failpoint("consumer.after_fetch")
        self._recorder.record_received(len(deliveries))
        now = time.monotonic()
        for delivery in deliveries:
            self._held[delivery.id] = now
            self._work.put_nowait(delivery)

    async def next(self) -> Delivery | None:
        """The next queued delivery, or None: stop."""
        return await self._work.get()

    def take_batch(self, first: Delivery, size: int) -> list[Delivery]:
        """``first`` plus whatever is already queued, up to ``size``."""
        batch = [first]
        while len(batch) < size and not self._work.empty():
            item = self._work.get_nowait()
            if item is None:
                self._work.put_nowait(None)  # another worker's stop signal: leave it
                break
            batch.append(item)
        return batch

    @property
    def queue_empty(self) -> bool:
        return self._work.empty()

    def finished(self, deliveries: list[Delivery]) -> None:
        """The workers are done with these: their slots are free."""
        for delivery in deliveries:
            self._held.pop(delivery.id, None)
        self._slots_freed.set()

    def stop_workers(self, count: int) -> None:
        for _ in range(count):
            self._work.put_nowait(None)

    @property
    def free(self) -> int:
        return self.limit - len(self._held)

    async def wait_for_capacity(self) -> int:
        """Wait until a worthwhile batch (a quarter of the read-ahead) can be held; the
        number of free slots."""
        batch = max(1, self.limit // 4)
        while self.free < batch:
            self._slots_freed.clear()
            await self._slots_freed.wait()
        return self.free

    def due(self, idle_seconds: float, now: float) -> list[str]:
        """Held entries whose idle time was reset ``idle_seconds`` ago or longer."""
        return [i for i, reset in self._held.items() if now - reset >= idle_seconds]

    def refreshed(self, ids: list[str], now: float) -> None:
        """Their idle time was reset at ``now`` (those still held)."""
        for entry_id in ids:
            if entry_id in self._held:
                self._held[entry_id] = now
