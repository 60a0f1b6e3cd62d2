"""An in-memory stream with one consumer group, standing in for the consumer's stream
operations (``StreamOperations``): entries, the pending entries list with owners and
delivery counts, a clock the test moves, and errors to raise on chosen calls. No server,
no sleeping: idle times follow the fake clock, and tests wait for changes
(:meth:`FakeGroup.wait_for`) instead of sleeping."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from safesync_async import ConsumerGroupMissingError, JsonCodec, ServerInfo
from safesync_async.queue._streams import ClaimResult, Delivery, GroupInfo, PendingEntry

__all__ = ["FakeGroup", "FakeStream"]

_HANDED_BACK_IDLE_MS = 2**40


def _key(entry_id: str) -> tuple[int, int]:
    ms, _, seq = entry_id.partition("-")
    return int(ms), int(seq or 0)


@dataclass
class Pending:
    owner: str
    deliveries: int
    delivered_at_ms: int


@dataclass
class FakeGroup:
    """The shared state: one stream, one group. ``consumer(name)`` gives a consumer's view."""

    stream: str = "s"
    group: str = "g"
    clock_ms: int = 1_000_000
    entries: dict[str, dict[bytes, bytes]] = field(default_factory=dict)
    pending: dict[str, Pending] = field(default_factory=dict)
    group_exists: bool = False
    last_delivered: str = "0-0"
    acked: list[str] = field(default_factory=list)
    dead_letters: list[tuple[str, dict[bytes, bytes]]] = field(default_factory=list)
    released: list[str] = field(default_factory=list)
    handed_back: list[str] = field(default_factory=list)
    touched: list[list[str]] = field(default_factory=list)
    failures: dict[str, list[BaseException]] = field(default_factory=dict)
    _sequence: int = 0
    _changed: asyncio.Event = field(default_factory=asyncio.Event)

    def consumer(self, name: str = "c") -> FakeStream:
        return FakeStream(self, name)

    def add(self, payload: Any = None, *, fields: Mapping[bytes, bytes] | None = None) -> str:
        """XADD: ``payload`` as JSON in ``data`` (or raw ``fields``); the new id."""
        self._sequence += 1
        entry_id = f"{self.clock_ms}-{self._sequence}"
        self.entries[entry_id] = dict(fields) if fields is not None else JsonCodec().encode(payload)
        self.changed()
        return entry_id

    def advance(self, ms: int) -> None:
        """Move the clock: pending entries get older."""
        self.clock_ms += ms
        self.changed()

    def fail_next(self, operation: str, *errors: BaseException) -> None:
        """The next calls of ``operation`` raise ``errors``, one each, in order."""
        self.failures.setdefault(operation, []).extend(errors)

    def delete(self, entry_id: str) -> None:
        """XDEL: the entry is gone; if it was pending, it stays in the pending list."""
        del self.entries[entry_id]
        self.changed()

    def delete_stream(self) -> None:
        """DEL: the entries, the group and its pending list are gone."""
        self.entries.clear()
        self.pending.clear()
        self.group_exists = False
        self.last_delivered = "0-0"
        self.changed()

    def idle_ms(self, entry_id: str) -> int:
        return self.clock_ms - self.pending[entry_id].delivered_at_ms

    def changed(self) -> None:
        self._changed.set()

    async def wait_for(self, condition: Callable[[], bool], timeout: float = 10) -> None:
        """Wait until ``condition()`` holds, re-checking after every change of the group
        (and at least every 10 ms, for conditions on the consumer's own counters)."""
        async with asyncio.timeout(timeout):
            while not condition():
                self._changed.clear()
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(0.01):
                        await self._changed.wait()


class FakeStream:
    """One consumer's stream operations on a :class:`FakeGroup`."""

    def __init__(self, state: FakeGroup, consumer: str) -> None:
        self.state = state
        self.stream = state.stream
        self.group = state.group
        self.consumer = consumer

    def _call(self, operation: str) -> None:
        """Raise the error queued for ``operation``, if any."""
        queued = self.state.failures.get(operation)
        if queued:
            raise queued.pop(0)

    def _require_group(self, operation: str) -> None:
        if not self.state.group_exists:
            raise ConsumerGroupMissingError(f"consumer group missing during {operation}")

    def _owned(self, entry_id: str) -> Pending | None:
        pending = self.state.pending.get(entry_id)
        return pending if pending is not None and pending.owner == self.consumer else None

    def _deliver(self, entry_id: str) -> Delivery:
        state = self.state
        pending = state.pending.get(entry_id)
        count = pending.deliveries + 1 if pending is not None else 1
        state.pending[entry_id] = Pending(self.consumer, count, state.clock_ms)
        return Delivery(entry_id, dict(state.entries.get(entry_id, {})), count)

    async def inspect_server(self, block_ms: int) -> ServerInfo:
        self._call("inspect_server")
        return ServerInfo("redis", (7, 2), "aof")

    async def ensure_group(self, start_id: str) -> bool:
        self._call("ensure_group")
        state = self.state
        if state.group_exists:
            return False
        state.group_exists = True
        state.last_delivered = "0-0" if start_id == "0" else next(reversed(state.entries), "0-0")
        state.changed()
        return True

    async def group_info(self) -> GroupInfo | None:
        self._call("group_info")
        state = self.state
        if not state.group_exists:
            return None
        lag = sum(1 for i in state.entries if _key(i) > _key(state.last_delivered))
        return GroupInfo(state.group, len(state.pending), state.last_delivered, lag)

    async def last_generated_id(self) -> str | None:
        self._call("last_generated_id")
        return next(reversed(self.state.entries), None)

    async def read_new(self, count: int, block_ms: int | None) -> list[Delivery]:
        self._call("read_new")
        self._require_group("XREADGROUP")
        state = self.state
        fresh = [i for i in state.entries if _key(i) > _key(state.last_delivered)][:count]
        if not fresh and block_ms:
            state._changed.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(block_ms / 1000):
                    await state._changed.wait()
            return await self.read_new(count, None)
        if fresh:
            state.last_delivered = fresh[-1]
            state.changed()
        return [self._deliver(i) for i in fresh]

    async def read_own_pending(self, after_id: str, count: int) -> list[Delivery]:
        self._call("read_own_pending")
        self._require_group("XREADGROUP")
        own = sorted(
            (i for i, p in self.state.pending.items() if p.owner == self.consumer),
            key=_key,
        )
        return [self._deliver(i) for i in own if _key(i) > _key(after_id)][:count]

    async def claim_idle(self, min_idle_ms: int, cursor: str, count: int) -> ClaimResult:
        self._call("claim_idle")
        self._require_group("XAUTOCLAIM")
        state = self.state
        claimed: list[Delivery] = []
        deleted: list[str] = []
        for entry_id in sorted(state.pending, key=_key):
            if _key(entry_id) < _key(cursor) or state.idle_ms(entry_id) < min_idle_ms:
                continue
            if len(claimed) == count:
                return ClaimResult(entry_id, claimed, deleted)
            if entry_id not in state.entries:
                del state.pending[entry_id]
                deleted.append(entry_id)
            else:
                claimed.append(self._deliver(entry_id))
        state.changed()
        return ClaimResult("0-0", claimed, deleted)

    async def ack(self, ids: Sequence[str]) -> int:
        self._call("ack")
        state = self.state
        done = [i for i in ids if state.pending.pop(i, None) is not None]
        state.acked += done
        state.changed()
        return len(done)

    async def dead_letter(
        self, dead_letter_stream: str, fields: Mapping[bytes, bytes], entry_id: str
    ) -> str:
        self._call("dead_letter")
        state = self.state
        state.dead_letters.append((entry_id, dict(fields)))
        state.pending.pop(entry_id, None)
        state.changed()
        return f"{state.clock_ms}-0"

    async def own_pending(self, count: int) -> list[PendingEntry]:
        self._call("own_pending")
        state = self.state
        own = sorted((i for i in state.pending if self._owned(i)), key=_key)[:count]
        return [
            PendingEntry(i, self.consumer, state.idle_ms(i), state.pending[i].deliveries)
            for i in own
        ]

    async def touch(self, ids: Sequence[str]) -> list[str]:
        self._call("touch")
        state = self.state
        touched = []
        for entry_id in ids:
            pending = self._owned(entry_id)
            if pending is not None:
                pending.delivered_at_ms = state.clock_ms
                touched.append(entry_id)
        state.touched.append(touched)
        state.changed()
        return touched

    async def release(self, deliveries: Sequence[Delivery]) -> None:
        self._call("release")
        for delivery in deliveries:
            pending = self._owned(delivery.id)
            if pending is not None:
                pending.deliveries = max(delivery.delivery_count - 1, 0)
                pending.delivered_at_ms = self.state.clock_ms
                self.state.released.append(delivery.id)
        self.state.changed()

    async def hand_back(self, entries: Sequence[PendingEntry]) -> None:
        self._call("hand_back")
        for entry in entries:
            pending = self._owned(entry.id)
            if pending is not None:
                pending.deliveries = max(entry.delivery_count - 1, 0)
                pending.delivered_at_ms = self.state.clock_ms - _HANDED_BACK_IDLE_MS
                self.state.handed_back.append(entry.id)
        self.state.changed()
