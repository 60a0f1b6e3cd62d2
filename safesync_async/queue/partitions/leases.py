"""Partition leases and group membership in Redis.

A lease is one key per partition and group (``{orders/3}:lease:<group>``) whose value
names its holder, the epoch of the acquisition and when it was acquired
(``<member>|<epoch>|<unix ms>``), with a TTL the holder renews. Acquiring takes the lease
only if it is free and increments the partition's epoch counter in the same script, so
every acquisition has a larger epoch than the ones before. Renewing and releasing only
act on the holder's own value. Membership is a sorted set of member names scored by when
their heartbeat expires, on the server's clock (``TIME``), so the members' clocks do not
need to agree.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from ...errors import ConfigurationError
from .._errors import redis_errors
from .._streams import text
from ..client import RedisClient
from .layout import PartitionedStream

__all__ = ["Lease", "LeaseStore", "assignment", "check_partition_count", "parse_lease"]

_ACQUIRE = """
if redis.call('EXISTS', KEYS[1]) == 1 then return false end
local epoch = redis.call('INCR', KEYS[2])
local t = redis.call('TIME')
local now = t[1] * 1000 + math.floor(t[2] / 1000)
local value = ARGV[1] .. '|' .. epoch .. '|' .. now
redis.call('SET', KEYS[1], value, 'PX', ARGV[2])
return value
"""
_RENEW = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0
"""
_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""
_RAISE_EPOCH = """
if (tonumber(redis.call('GET', KEYS[1])) or 0) < tonumber(ARGV[1]) then
  redis.call('SET', KEYS[1], ARGV[1])
end
return 1
"""
_HEARTBEAT = """
local t = redis.call('TIME')
local now = t[1] * 1000 + math.floor(t[2] / 1000)
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
redis.call('ZADD', KEYS[1], now + tonumber(ARGV[2]), ARGV[1])
redis.call('PEXPIRE', KEYS[1], tonumber(ARGV[2]) * 10)
return redis.call('ZRANGE', KEYS[1], 0, -1)
"""


@dataclass(frozen=True, slots=True)
class Lease:
    """One acquisition of a partition: by ``member``, with fencing ``epoch``, at
    ``acquired_ms`` (Redis server time, Unix milliseconds). ``value`` is the lease key's
    value, which the holder's renewals, reads and release compare with."""

    partition: int
    member: str
    epoch: int
    acquired_ms: int
    value: str


def parse_lease(partition: int, value: bytes | str) -> Lease:
    """The lease stored as ``value`` (``<member>|<epoch>|<ms>``)."""
    raw = text(value)
    member, epoch, acquired = raw.rsplit("|", 2)
    return Lease(partition, member, int(epoch), int(acquired), raw)


async def check_partition_count(redis: RedisClient, stream: PartitionedStream) -> None:
    """Record the stream's partition count, or refuse a different one recorded already."""
    key = stream.count_key
    with redis_errors("SET NX (partition count)", key):
        await redis.set(key, stream.partitions, nx=True)
        recorded = await redis.get(key)
    if recorded is not None and int(recorded) != stream.partitions:
        raise ConfigurationError(
            f"partitioned stream {stream.name!r} has {int(recorded)} partitions in Redis "
            f"({key}), not {stream.partitions}: a key's partition depends on the count, so "
            "every producer and consumer must use the same one"
        )


class LeaseStore:
    """The leases and membership of one consumer group on a partitioned stream."""

    def __init__(self, redis: RedisClient, stream: PartitionedStream, group: str) -> None:
        self.redis = redis
        self.stream = stream
        self.group = group
        self._acquire = redis.register_script(_ACQUIRE)
        self._renew = redis.register_script(_RENEW)
        self._release = redis.register_script(_RELEASE)
        self._raise_epoch = redis.register_script(_RAISE_EPOCH)
        self._heartbeat = redis.register_script(_HEARTBEAT)

    async def heartbeat(self, member: str, ttl_ms: int) -> list[str]:
        """Say ``member`` is alive for ``ttl_ms`` more; the live members, sorted."""
        key = self.stream.members_key(self.group)
        with redis_errors("membership heartbeat", key):
            members = await self._heartbeat(keys=[key], args=[member, ttl_ms])
        return sorted(text(m) for m in members)

    async def leave(self, member: str) -> None:
        key = self.stream.members_key(self.group)
        with redis_errors("ZREM (leave)", key):
            await self.redis.zrem(key, member)

    async def acquire(self, partition: int, member: str, ttl_ms: int) -> Lease | None:
        """Take the lease if it is free (a new, larger epoch); None if it is held."""
        keys = [
            self.stream.lease_key(partition, self.group),
            self.stream.epoch_key(partition, self.group),
        ]
        with redis_errors("lease acquire", keys[0]):
            value = await self._acquire(keys=keys, args=[member, ttl_ms])
        return None if value is None else parse_lease(partition, value)

    async def renew(self, lease: Lease, ttl_ms: int) -> bool:
        """Extend the lease; False if it is no longer this holder's."""
        key = self.stream.lease_key(lease.partition, self.group)
        with redis_errors("lease renew", key):
            return bool(await self._renew(keys=[key], args=[lease.value, ttl_ms]))

    async def release(self, lease: Lease) -> bool:
        """Give the lease up; False if it was no longer this holder's."""
        key = self.stream.lease_key(lease.partition, self.group)
        with redis_errors("lease release", key):
            return bool(await self._release(keys=[key], args=[lease.value]))

    async def raise_epoch(self, partition: int, floor: int) -> None:
        """Make the next acquisition's epoch larger than ``floor`` (the database knows a
        larger epoch than Redis: Redis lost the counter, e.g. in a failover)."""
        key = self.stream.epoch_key(partition, self.group)
        with redis_errors("epoch raise", key):
            await self._raise_epoch(keys=[key], args=[floor])

    async def holders(self, partitions: Sequence[int]) -> dict[int, Lease | None]:
        """The current lease of each partition (None: free)."""
        found: dict[int, Lease | None] = {}
        for partition in partitions:
            key = self.stream.lease_key(partition, self.group)
            with redis_errors("GET (lease)", key):
                value = await self.redis.get(key)
            found[partition] = None if value is None else parse_lease(partition, value)
        return found


def assignment(members: Sequence[str], partitions: int) -> dict[str, list[int]]:
    """Which partitions each member should own: round robin over the sorted members, so
    every member gets ``partitions // len(members)`` or one more."""
    ordered = sorted(members)
    result: dict[str, list[int]] = {member: [] for member in ordered}
    for partition in range(partitions):
        if ordered:
            result[ordered[partition % len(ordered)]].append(partition)
    return result
