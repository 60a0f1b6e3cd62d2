"""The stream operations of one (stream, group, consumer): every Redis command a consumer
issues, with reply shapes normalised and errors translated (see ``_errors``). No policy
lives here: the consumer decides what to do. :class:`StreamOperations` is the seam a test
can fill with an in-memory stream."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, cast

from ..errors import QueueConnectionError, QueueError, QueueUnavailableError
from ._errors import is_busy_group, redis_errors
from .client import RedisClient, ServerInfo, check_redis_client, server_info

__all__ = [
    "ClaimResult",
    "Delivery",
    "GroupInfo",
    "GroupStream",
    "PendingEntry",
    "StreamOperations",
    "group_of",
    "parse_groups",
    "read_groups",
    "read_response_entries",
    "text",
]

# Hand-back sets an entry's idle time this high (about 35 years) so any claimer takes it.
_HANDED_BACK_IDLE_MS = 2**40

# XCLAIM ... JUSTID, to this consumer, of the entries it still owns; entries another
# consumer took meanwhile (or that were acked or deleted) are left alone, so resetting an
# idle time can never steal an entry back. One round trip; the stream is the only key.
# ARGV: group, consumer, IDLE ms or '', then (id, RETRYCOUNT or '') pairs.
_RECLAIM_OWNED = """
local group, consumer, idle = ARGV[1], ARGV[2], ARGV[3]
local claimed = {}
for i = 4, #ARGV, 2 do
  local id, retries = ARGV[i], ARGV[i + 1]
  local entry = redis.call('XPENDING', KEYS[1], group, id, id, 1)[1]
  if entry and entry[2] == consumer then
    local args = {'XCLAIM', KEYS[1], group, consumer, 0, id}
    if idle ~= '' then args[#args + 1] = 'IDLE'; args[#args + 1] = idle end
    if retries ~= '' then args[#args + 1] = 'RETRYCOUNT'; args[#args + 1] = retries end
    args[#args + 1] = 'JUSTID'
    redis.call(unpack(args))
    claimed[#claimed + 1] = id
  end
end
return claimed
"""


@dataclass(frozen=True, slots=True)
class Delivery:
    """An entry delivered to this consumer, not decoded yet. Empty ``fields`` means the
    entry was deleted or trimmed while it was pending."""

    id: str
    fields: dict[bytes, bytes]
    delivery_count: int

    @property
    def size(self) -> int:
        return sum(len(k) + len(v) for k, v in self.fields.items())


@dataclass(frozen=True, slots=True)
class ClaimResult:
    next_cursor: str
    deliveries: list[Delivery]
    deleted_ids: list[str]


@dataclass(frozen=True, slots=True)
class PendingEntry:
    id: str
    consumer: str
    idle_ms: int
    delivery_count: int


@dataclass(frozen=True, slots=True)
class GroupInfo:
    """One group of XINFO GROUPS."""

    name: str
    pending: int
    last_delivered_id: str
    lag: int | None  # entries not delivered yet (None: Redis < 7 or cannot tell)


class StreamOperations(Protocol):
    """What a consumer asks of its stream. :class:`GroupStream` sends it to Redis."""

    stream: str
    group: str
    consumer: str

    async def inspect_server(self, block_ms: int) -> ServerInfo:
        """Check the client's settings and detect the server's features."""
        ...

    async def ensure_group(self, start_id: str) -> bool:
        """Create the group (and the stream); False if it already existed."""
        ...

    async def group_info(self) -> GroupInfo | None:
        """This group's figures; None if the stream or the group does not exist."""
        ...

    async def last_generated_id(self) -> str | None:
        """The id of the last entry ever added; None if the stream does not exist."""
        ...

    async def read_new(self, count: int, block_ms: int | None) -> list[Delivery]:
        """Never-delivered entries (``>``); their delivery count is 1."""
        ...

    async def read_own_pending(self, after_id: str, count: int) -> list[Delivery]:
        """This consumer's own pending entries with ids above ``after_id``."""
        ...

    async def claim_idle(self, min_idle_ms: int, cursor: str, count: int) -> ClaimResult:
        """XAUTOCLAIM from ``cursor``: entries idle at least ``min_idle_ms``, any owner."""
        ...

    async def ack(self, ids: Sequence[str]) -> int:
        """XACK; how many were still pending (0 also when the group is gone)."""
        ...

    async def dead_letter(
        self, dead_letter_stream: str, fields: Mapping[bytes, bytes], entry_id: str
    ) -> str:
        """Add ``fields`` to the dead-letter stream and ack the original, atomically."""
        ...

    async def own_pending(self, count: int) -> list[PendingEntry]:
        """Pending entries owned by this consumer, oldest first."""
        ...

    async def touch(self, ids: Sequence[str]) -> list[str]:
        """Reset the idle time of those entries this consumer still owns, without
        counting a delivery; returns the ids touched."""
        ...

    async def release(self, deliveries: Sequence[Delivery]) -> None:
        """Keep entries pending without counting their last delivery."""
        ...

    async def hand_back(self, entries: Sequence[PendingEntry]) -> None:
        """Make entries claimable by others at once, without counting a delivery."""
        ...


def text(value: object) -> str:
    """A reply value (bytes or str) as str."""
    return value.decode() if isinstance(value, bytes) else str(value)


def _entries(raw: Any) -> list[tuple[str, dict[bytes, bytes]]]:
    """(id, fields) pairs from an entry list; ``None`` fields (Redis 6.2 deleted) become {}."""
    out = []
    for item in raw or ():
        entry_id, fields = item[0], item[1]
        if entry_id is None:
            continue
        out.append((text(entry_id), dict(fields) if fields else {}))
    return out


def read_response_entries(response: Any) -> list[tuple[str, dict[bytes, bytes]]]:
    """Entries of a one-stream XREADGROUP reply, whatever the protocol/legacy setting:
    ``[[stream, entries]]`` (RESP2 shape), ``{stream: entries}`` or ``{stream: [entries]}``."""
    if not response:
        return []
    if isinstance(response, Mapping):
        value = next(iter(response.values()))
        if value and not isinstance(value[0][0], bytes | str):
            value = value[0]  # RESP3 with legacy shapes nests the entry list once more
        return _entries(value)
    return _entries(response[0][1])


def parse_groups(raw: Iterable[Mapping[str, Any]]) -> list[GroupInfo]:
    """An XINFO GROUPS reply as :class:`GroupInfo` rows."""
    return [
        GroupInfo(
            name=text(group["name"]),
            pending=int(group.get("pending") or 0),
            last_delivered_id=text(group["last-delivered-id"]),
            lag=None if group.get("lag") is None else int(group["lag"]),
        )
        for group in raw
    ]


async def read_groups(redis: RedisClient, stream: str) -> list[GroupInfo]:
    """The groups of ``stream`` (XINFO GROUPS); raises if the stream does not exist."""
    with redis_errors("XINFO GROUPS", stream):
        return parse_groups(await redis.xinfo_groups(stream))


async def group_of(redis: RedisClient, stream: str, group: str) -> GroupInfo | None:
    """``group`` of ``stream`` (XINFO GROUPS); None if the stream or the group is missing."""
    with redis_errors("EXISTS", stream):
        if not await redis.exists(stream):
            return None
    for info in await read_groups(redis, stream):
        if info.name == group:
            return info
    return None


class GroupStream:
    """:class:`StreamOperations` on Redis: commands on ``stream`` as ``consumer`` of
    ``group``. Every command names the stream (the script's only key); the dead-letter
    transaction also names the dead-letter stream, which must share the stream's hash
    slot on a cluster (see :mod:`safesync_async.queue.keys`)."""

    def __init__(self, redis: RedisClient, stream: str, group: str, consumer: str) -> None:
        self.redis = redis
        self.stream = stream
        self.group = group
        self.consumer = consumer
        self._reclaim_owned = redis.register_script(_RECLAIM_OWNED)

    async def inspect_server(self, block_ms: int) -> ServerInfo:
        check_redis_client(self.redis, block_ms=block_ms)
        return await server_info(self.redis)

    async def ensure_group(self, start_id: str) -> bool:
        """Create the group (and the stream); False if it already existed. A refusal for
        now (OOM at maxmemory, a read-only replica) is fine when the group exists: a
        consumer can read and ack (which frees memory) without creating anything."""
        try:
            with redis_errors("XGROUP CREATE", self.stream):
                await self.redis.xgroup_create(self.stream, self.group, id=start_id, mkstream=True)
        except QueueConnectionError:
            raise
        except QueueUnavailableError:
            if await self._group_exists():
                return False
            raise
        except QueueError as exc:
            if is_busy_group(exc):
                return False
            raise
        return True

    async def _group_exists(self) -> bool:
        try:
            return await self.group_info() is not None
        except QueueUnavailableError:
            return False

    async def group_info(self) -> GroupInfo | None:
        return await group_of(self.redis, self.stream, self.group)

    async def last_generated_id(self) -> str | None:
        with redis_errors("XINFO STREAM", self.stream):
            if not await self.redis.exists(self.stream):
                return None
            return text((await self.redis.xinfo_stream(self.stream))["last-generated-id"])

    async def read_new(self, count: int, block_ms: int | None) -> list[Delivery]:
        with redis_errors("XREADGROUP", self.stream):
            response = await self.redis.xreadgroup(
                self.group, self.consumer, {self.stream: ">"}, count=count, block=block_ms
            )
        return [Delivery(i, f, 1) for i, f in read_response_entries(response)]

    async def read_own_pending(self, after_id: str, count: int) -> list[Delivery]:
        with redis_errors("XREADGROUP (own pending)", self.stream):
            response = await self.redis.xreadgroup(
                self.group, self.consumer, {self.stream: after_id}, count=count
            )
        entries = read_response_entries(response)
        counts = await self._delivery_counts([i for i, _ in entries])
        return [Delivery(i, f, counts.get(i, 1)) for i, f in entries]

    async def claim_idle(self, min_idle_ms: int, cursor: str, count: int) -> ClaimResult:
        with redis_errors("XAUTOCLAIM", self.stream):
            response = await self.redis.xautoclaim(
                self.stream, self.group, self.consumer, min_idle_ms, start_id=cursor, count=count
            )
        next_cursor = text(response[0])
        entries = _entries(response[1])
        deleted = [text(i) for i in response[2]] if len(response) > 2 else []
        counts = await self._delivery_counts([i for i, _ in entries])
        return ClaimResult(
            next_cursor, [Delivery(i, f, counts.get(i, 1)) for i, f in entries], deleted
        )

    async def _delivery_counts(self, ids: Sequence[str]) -> dict[str, int]:
        """Delivery counts of pending entries, one pipelined XPENDING per id."""
        if not ids:
            return {}
        with redis_errors("XPENDING", self.stream):
            async with self.redis.pipeline(transaction=False) as pipe:
                for entry_id in ids:
                    pipe.xpending_range(self.stream, self.group, entry_id, entry_id, 1)
                replies = await pipe.execute()
        counts = {}
        for reply in replies:
            for row in reply:
                counts[text(row["message_id"])] = int(row["times_delivered"])
        return counts

    async def ack(self, ids: Sequence[str]) -> int:
        with redis_errors("XACK", self.stream):
            return int(await self.redis.xack(self.stream, self.group, *ids))

    async def dead_letter(
        self, dead_letter_stream: str, fields: Mapping[bytes, bytes], entry_id: str
    ) -> str:
        """MULTI/EXEC: the dead letter is written before, and together with, the ack."""
        with redis_errors("dead-letter XADD+XACK", self.stream):
            async with self.redis.pipeline(transaction=True) as pipe:
                pipe.xadd(dead_letter_stream, cast(Any, dict(fields)))
                pipe.xack(self.stream, self.group, entry_id)
                added, _acked = await pipe.execute()
        return text(added)

    async def own_pending(self, count: int) -> list[PendingEntry]:
        return await self.pending(count, consumer=self.consumer)

    async def pending(self, count: int, *, consumer: str | None = None) -> list[PendingEntry]:
        """The oldest ``count`` pending entries of the group (or of one consumer)."""
        with redis_errors("XPENDING", self.stream):
            rows = await self.redis.xpending_range(
                self.stream, self.group, "-", "+", count, consumername=consumer
            )
        return [
            PendingEntry(
                text(r["message_id"]),
                text(r["consumer"]),
                int(r["time_since_delivered"]),
                int(r["times_delivered"]),
            )
            for r in rows
        ]

    async def touch(self, ids: Sequence[str]) -> list[str]:
        """XCLAIM ... JUSTID to itself, of the entries still owned (see _RECLAIM_OWNED)."""
        return await self._reclaim("XCLAIM (keep alive)", ((i, None) for i in ids))

    async def release(self, deliveries: Sequence[Delivery]) -> None:
        """For entries that failed for reasons outside the message (the database was
        down): XCLAIM ... RETRYCOUNT n-1 JUSTID, so the delivery is not counted."""
        await self._reclaim(
            "XCLAIM (release)", ((d.id, max(d.delivery_count - 1, 0)) for d in deliveries)
        )

    async def hand_back(self, entries: Sequence[PendingEntry]) -> None:
        """XCLAIM ... IDLE <huge> RETRYCOUNT n-1 JUSTID: claimable by any consumer at once,
        the hand-back not counted as a delivery."""
        await self._reclaim(
            "XCLAIM (hand back)",
            ((e.id, max(e.delivery_count - 1, 0)) for e in entries),
            idle_ms=_HANDED_BACK_IDLE_MS,
        )

    async def _reclaim(
        self, operation: str, entries: Iterable[tuple[str, int | None]], idle_ms: int | None = None
    ) -> list[str]:
        args: list[str | int] = [self.group, self.consumer, "" if idle_ms is None else idle_ms]
        for entry_id, retry_count in entries:
            args += [entry_id, "" if retry_count is None else retry_count]
        if len(args) == 3:
            return []
        with redis_errors(operation, self.stream):
            claimed = await self._reclaim_owned(keys=[self.stream], args=args)
        return [text(i) for i in claimed]
