"""Key-ordered dispatch (``QueueConfig(ordering="key")``): messages with the same ordering
key start one at a time, in entry-id order; different keys, and messages without a key,
run concurrently. A message that did not settle (its handler failed, the database was
down, its COMMIT went unanswered) is retried in place after a backoff while its key's
later messages wait; the entries stay held, so the keep-alive keeps them from looking
abandoned and no other consumer claims them.

Keys take turns: a key whose message finished goes to the back of the line with its next
message, so a hot key never holds more than one worker. Everything a key waits with is
held, inside the run's read-ahead limit: memory stays bounded, and a key that never comes
back costs nothing once its last message settled."""

from __future__ import annotations

import asyncio
import bisect
import dataclasses
import random
from collections.abc import Callable, Sequence

from ._failures import Outcome
from ._in_flight import Dispatch
from ._keys import OrderingKeys, ScheduledKey
from ._outages import DatabaseOutage
from ._streams import Delivery, PendingEntry
from .config import QueueConfig

__all__ = ["KeyedDispatch"]


def _id_order(delivery: Delivery) -> tuple[int, int]:
    ms, _, seq = delivery.id.partition("-")
    return int(ms), int(seq or 0)


class _Key:
    """One key's messages not started yet, in id order. A key is tracked while it has a
    held message: then exactly one of these is true: it is in the ready line, a worker
    runs its message, or its retry timer runs."""

    __slots__ = ("name", "timer", "waiting")

    def __init__(self, name: bytes) -> None:
        self.name = name
        self.waiting: list[Delivery] = []
        self.timer: asyncio.TimerHandle | None = None

    def insert(self, delivery: Delivery) -> None:
        waiting = self.waiting
        if not waiting or _id_order(waiting[-1]) < _id_order(delivery):
            waiting.append(delivery)  # the usual case: read in stream order
        else:
            bisect.insort(waiting, delivery, key=_id_order)  # claimed, or retried


class KeyedDispatch(Dispatch):
    """The ready line holds keys whose next message may start (a worker takes the key's
    oldest waiting message when it gets there, so an older entry claimed meanwhile goes
    first) and messages without a key."""

    def __init__(self, config: QueueConfig, outage: DatabaseOutage) -> None:
        self._keys = OrderingKeys(config)
        self._outage = outage
        self._first_delay = config.ordering_retry_delay
        self._max_delay = config.ordering_retry_max_delay
        self._ready: asyncio.Queue[_Key | Delivery | None] = asyncio.Queue()
        self._tracked: dict[bytes, _Key] = {}
        self._scheduled: dict[str, ScheduledKey] = {}  # held entry -> the key it runs under
        self._waiting = 0  # keyed messages not started
        self._stopping = False

    def key(self, delivery: Delivery) -> ScheduledKey:
        """The key ``delivery`` was scheduled by."""
        return self._scheduled.get(delivery.id)

    @property
    def keys_tracked(self) -> int:
        """Keys with a held message."""
        return len(self._tracked)

    def put(self, delivery: Delivery) -> None:
        key = self._keys.of_delivery(delivery)
        self._scheduled[delivery.id] = key
        if not isinstance(key, bytes):
            self._ready.put_nowait(delivery)
            return
        entry = self._tracked.get(key)
        if entry is None:
            entry = self._tracked[key] = _Key(key)
            self._ready.put_nowait(entry)
        entry.insert(delivery)
        self._waiting += 1

    async def get(self) -> Delivery | None:
        while True:
            item = await self._ready.get()
            if item is None:
                return None
            delivery = self._take(item)
            if delivery is not None:
                return delivery

    def _take(self, item: _Key | Delivery) -> Delivery | None:
        """A message without a key, or the oldest waiting message of a ready key."""
        if not isinstance(item, _Key):
            return item
        if not item.waiting:  # not reached (a ready key has a message), but never lose it
            del self._tracked[item.name]
            return None
        return self._start(item)

    def _start(self, entry: _Key) -> Delivery:
        self._waiting -= 1
        return entry.waiting.pop(0)

    def take_more(self, batch: list[Delivery], size: int) -> None:
        """Other ready messages first, then the next messages of the batch's own keys (in
        order, after their predecessor): no message of a key runs elsewhere meanwhile."""
        while len(batch) < size and not self._ready.empty():
            item = self._ready.get_nowait()
            if item is None:
                self._ready.put_nowait(None)  # another worker's stop signal: leave it
                break
            delivery = self._take(item)
            if delivery is not None:
                batch.append(delivery)
        for delivery in list(batch):
            key = self._scheduled.get(delivery.id)
            entry = self._tracked.get(key) if isinstance(key, bytes) else None
            while entry is not None and entry.waiting and len(batch) < size:
                batch.append(self._start(entry))

    @property
    def empty(self) -> bool:
        return self._ready.empty()

    @property
    def blocked(self) -> bool:
        return self._waiting > 0 and self._ready.empty()

    def settle(
        self, deliveries: Sequence[Delivery], outcomes: Sequence[Outcome] | None
    ) -> list[str]:
        """Settled messages free their slot; the others go back to the head of their
        key's line (a failed one counting the attempt) and the key waits for a retry."""
        freed = []
        retry_in: dict[bytes, float] = {}
        keys: dict[bytes, _Key] = {}
        for index, delivery in enumerate(deliveries):
            outcome = Outcome.KEPT if outcomes is None else outcomes[index]
            key = self._scheduled.get(delivery.id)
            if not isinstance(key, bytes) or outcome is Outcome.DONE:
                self._scheduled.pop(delivery.id, None)
                freed.append(delivery.id)
                if isinstance(key, bytes):
                    keys.setdefault(key, self._tracked[key])
                continue  # without a key: retried after claim_min_idle_ms, as unordered
            entry = keys.setdefault(key, self._tracked[key])
            attempt = delivery.delivery_count
            if outcome is Outcome.FAILED:
                delivery = dataclasses.replace(delivery, delivery_count=attempt + 1)
            entry.insert(delivery)
            self._waiting += 1
            if key not in retry_in:  # the first of the key's messages that did not settle
                retry_in[key] = self._retry_delay(attempt)
        for key, entry in keys.items():
            if self._stopping:
                continue  # kept for the hand-back
            if key in retry_in:
                entry.timer = asyncio.get_running_loop().call_later(
                    retry_in[key], self._retry_due, entry
                )
            elif entry.waiting:
                self._ready.put_nowait(entry)  # to the back of the line: keys take turns
            else:
                del self._tracked[key]
        return freed

    def _retry_delay(self, attempt: int) -> float:
        """``uniform(c / 2, c)``, ``c`` doubling with each attempt; at least until reads
        resume after a database outage."""
        ceiling = min(self._max_delay, self._first_delay * 2 ** min(max(attempt, 1) - 1, 32))
        return max(random.uniform(ceiling / 2, ceiling), self._outage.remaining())

    def _retry_due(self, entry: _Key) -> None:
        entry.timer = None
        if not self._stopping:
            self._ready.put_nowait(entry)

    def stop(self, workers: int) -> None:
        self._stopping = True
        for entry in self._tracked.values():
            if entry.timer is not None:
                entry.timer.cancel()
                entry.timer = None
        for _ in range(workers):
            self._ready.put_nowait(None)

    def to_hand_back(
        self, pending: list[PendingEntry], failed_here: Callable[[str], bool]
    ) -> list[PendingEntry]:
        """Every keyed entry still held goes back together, retried ones included (their
        local attempts recorded as deliveries), so no key's later messages are handed
        back while an earlier one stays behind; unkeyed ones as in unordered mode."""
        attempts = {d.id: d.delivery_count for e in self._tracked.values() for d in e.waiting}
        handed = []
        for entry in pending:
            local = attempts.get(entry.id)
            if local is not None:
                handed.append(
                    dataclasses.replace(entry, delivery_count=max(entry.delivery_count, local))
                )
            elif not failed_here(entry.id):
                handed.append(entry)
        return handed
