"""A partition's stream as its owner sees it: every command that takes entries into the
owner's pending list checks the lease first, in the same script.

Without that check a former owner resuming from a long pause could read new entries
(``XREADGROUP >``) after the new owner took over: they would sit in the former owner's
pending list while the new owner handled the same keys' later entries, out of order. A
script cannot block, so an empty read waits with a plain ``XREAD BLOCK`` (which takes
nothing) and then reads again under the lease.
"""

from __future__ import annotations

from typing import Any

from ...errors import PartitionLeaseLostError
from .._errors import redis_errors
from .._streams import Delivery, GroupStream, text
from ..client import RedisClient
from .leases import Lease

__all__ = ["LeasedStream"]

# KEYS: stream, lease. ARGV: lease value, group, consumer, count.
# -1 without the lease; the entries read; or, with none, the newest entry id to wait after.
_READ = """
if redis.call('GET', KEYS[2]) ~= ARGV[1] then return -1 end
local read = redis.call('XREADGROUP', 'GROUP', ARGV[2], ARGV[3], 'COUNT', ARGV[4],
  'STREAMS', KEYS[1], '>')
if read then return read end
local newest = redis.call('XREVRANGE', KEYS[1], '+', '-', 'COUNT', 1)[1]
if newest then return newest[1] end
return '0-0'
"""
# KEYS: stream, lease. ARGV: lease value, group, consumer, cursor, count.
# Every pending entry, whoever holds it, to this consumer: not counted as a delivery.
_TAKE_OVER = """
if redis.call('GET', KEYS[2]) ~= ARGV[1] then return -1 end
return redis.call('XAUTOCLAIM', KEYS[1], ARGV[2], ARGV[3], 0, ARGV[4], 'COUNT', ARGV[5],
  'JUSTID')
"""
_TAKE_OVER_BATCH = 1_000


class LeasedStream(GroupStream):
    """:class:`GroupStream` for the holder of ``lease`` on ``stream``: reads and the
    take-over raise :class:`PartitionLeaseLostError` once the lease is not its own."""

    def __init__(
        self,
        redis: RedisClient,
        stream: str,
        group: str,
        consumer: str,
        *,
        lease_key: str,
        lease: Lease,
    ) -> None:
        super().__init__(redis, stream, group, consumer)
        self.lease = lease
        self._lease_key = lease_key
        self._read = redis.register_script(_READ)
        self._take_over = redis.register_script(_TAKE_OVER)

    async def read_new(self, count: int, block_ms: int | None) -> list[Delivery]:
        reply = await self._read_once(count)
        if isinstance(reply, list):
            return reply
        if block_ms is not None:
            with redis_errors("XREAD (wait)", self.stream):
                await self.redis.xread({self.stream: reply}, count=1, block=max(block_ms, 1))
        reply = await self._read_once(count)
        return reply if isinstance(reply, list) else []

    async def _read_once(self, count: int) -> list[Delivery] | str:
        with redis_errors("XREADGROUP (leased)", self.stream):
            reply: Any = await self._read(
                keys=[self.stream, self._lease_key],
                args=[self.lease.value, self.group, self.consumer, count],
            )
        if isinstance(reply, int):
            raise self._lost()
        if isinstance(reply, list):  # [[stream, [[id, [field, value, ...]], ...]]], raw
            return [
                Delivery(text(entry_id), dict(zip(flat[::2], flat[1::2], strict=True)), 1)
                for entry_id, flat in reply[0][1]
            ]
        return text(reply)

    async def take_over(self) -> int:
        """Move every pending entry of the group to this consumer (a new owner takes what
        former owners left), without counting a delivery; how many were moved."""
        cursor, moved = "0-0", 0
        while True:
            with redis_errors("XAUTOCLAIM (take over)", self.stream):
                reply: Any = await self._take_over(
                    keys=[self.stream, self._lease_key],
                    args=[self.lease.value, self.group, self.consumer, cursor, _TAKE_OVER_BATCH],
                )
            if isinstance(reply, int):
                raise self._lost()
            cursor = text(reply[0])
            moved += len(reply[1])
            if cursor == "0-0":
                return moved

    def _lost(self) -> PartitionLeaseLostError:
        return PartitionLeaseLostError(
            f"the lease of partition {self.stream!r} (epoch {self.lease.epoch}) is no longer "
            f"held by {self.consumer!r}"
        )
