"""The entries a run holds: read or claimed and not finished, queued for the workers,
bounded by the read-ahead limit, each with the time its idle time was last reset. Which
held entry a worker takes next is the dispatch's business: first come first served, or
key-ordered (``_ordering``)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence
from typing import Protocol

from .._failpoints import failpoint
from ._failures import Outcome
from ._statistics import ConsumerRecorder
from ._streams import Delivery, PendingEntry

__all__ = ["Dispatch", "FifoDispatch", "InFlight"]


class Dispatch(Protocol):
    """Hands held deliveries to the workers."""

    def put(self, delivery: Delivery) -> None:
        """A delivery was read or claimed."""
        ...

    async def get(self) -> Delivery | None:
        """The next delivery a worker may start, or None: stop."""
        ...

    def take_more(self, batch: list[Delivery], size: int) -> None:
        """Add deliveries that may start now to ``batch``, up to ``size``."""
        ...

    @property
    def empty(self) -> bool:
        """Nothing may start right now."""
        ...

    @property
    def blocked(self) -> bool:
        """Nothing may start, yet held entries wait: reading more may give work."""
        ...

    def settle(
        self, deliveries: Sequence[Delivery], outcomes: Sequence[Outcome] | None
    ) -> list[str]:
        """The workers are done with these (``outcomes`` None: interrupted); the ids of
        those no longer held."""
        ...

    def stop(self, workers: int) -> None:
        """Tell ``workers`` workers to stop."""
        ...

    def to_hand_back(
        self, pending: list[PendingEntry], failed_here: Callable[[str], bool]
    ) -> list[PendingEntry]:
        """Of this consumer's pending entries at a graceful stop, those to hand back."""
        ...


class FifoDispatch:
    """Deliveries in the order they came, to any worker (``None`` tells one to stop)."""

    def __init__(self) -> None:
        self._work: asyncio.Queue[Delivery | None] = asyncio.Queue()

    def put(self, delivery: Delivery) -> None:
        self._work.put_nowait(delivery)

    async def get(self) -> Delivery | None:
        return await self._work.get()

    def take_more(self, batch: list[Delivery], size: int) -> None:
        while len(batch) < size and not self._work.empty():
            item = self._work.get_nowait()
            if item is None:
                self._work.put_nowait(None)  # another worker's stop signal: leave it
                break
            batch.append(item)

    @property
    def empty(self) -> bool:
        return self._work.empty()

    @property
    def blocked(self) -> bool:
        return False

    def settle(
        self, deliveries: Sequence[Delivery], outcomes: Sequence[Outcome] | None
    ) -> list[str]:
        return [delivery.id for delivery in deliveries]  # failures: retried after min idle

    def stop(self, workers: int) -> None:
        for _ in range(workers):
            self._work.put_nowait(None)

    def to_hand_back(
        self, pending: list[PendingEntry], failed_here: Callable[[str], bool]
    ) -> list[PendingEntry]:
        return [entry for entry in pending if not failed_here(entry.id)]  # retried after idle


class InFlight:
    """Held entries and how workers take them. At most ``limit`` entries are held."""

    def __init__(
        self, limit: int, recorder: ConsumerRecorder, dispatch: Dispatch | None = None
    ) -> None:
        self.limit = limit
        self._recorder = recorder
        self.dispatch: Dispatch = dispatch if dispatch is not None else FifoDispatch()
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
            self.dispatch.put(delivery)

    async def next(self) -> Delivery | None:
        """The next delivery to start, or None: stop."""
        return await self.dispatch.get()

    def take_batch(self, first: Delivery, size: int) -> list[Delivery]:
        """``first`` plus whatever may start with it, up to ``size``."""
        batch = [first]
        if size > 1:
            self.dispatch.take_more(batch, size)
        return batch

    @property
    def queue_empty(self) -> bool:
        return self.dispatch.empty

    def finished(
        self, deliveries: list[Delivery], outcomes: Sequence[Outcome] | None = None
    ) -> None:
        """The workers are done with these: the slots of those settled are free."""
        for entry_id in self.dispatch.settle(deliveries, outcomes):
            self._held.pop(entry_id, None)
        self._slots_freed.set()

    def stop_workers(self, count: int) -> None:
        self.dispatch.stop(count)

    @property
    def free(self) -> int:
        return self.limit - len(self._held)

    async def wait_for_capacity(self) -> int:
        """Wait until a worthwhile batch (a quarter of the read-ahead) can be held, or any
        slot when every held entry waits behind another of its key; the free slots."""
        batch = max(1, self.limit // 4)
        while self.free < batch and not (self.free > 0 and self.dispatch.blocked):
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
