"""Who owns which partition, since when, and how far behind each one is."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime

from .._streams import group_of
from ..client import RedisClient
from .layout import PartitionedStream
from .leases import LeaseStore

__all__ = ["PartitionStatus", "partition_status"]


@dataclass(frozen=True, slots=True)
class PartitionStatus:
    """One partition of a group, as Redis sees it now.

    Attributes:
        partition: its number.
        stream: its stream key.
        owner: the member holding its lease (None: unowned, e.g. during a rebalance).
        epoch: the lease's fencing epoch (None: unowned).
        since: when the lease was acquired (Redis server time, UTC).
        lag: entries not delivered to the group yet (None: the group or stream does not
            exist yet).
        pending: entries delivered and not acknowledged.
    """

    partition: int
    stream: str
    owner: str | None
    epoch: int | None
    since: datetime | None
    lag: int | None
    pending: int


async def partition_status(
    redis: RedisClient, stream: PartitionedStream, group: str
) -> list[PartitionStatus]:
    """Every partition of ``stream`` for consumer group ``group``, in order."""
    holders = await LeaseStore(redis, stream, group).holders(range(stream.partitions))
    result = []
    for partition, lease in holders.items():
        key = stream.stream_key(partition)
        info = await group_of(redis, key, group)
        result.append(
            PartitionStatus(
                partition=partition,
                stream=key,
                owner=lease.member if lease else None,
                epoch=lease.epoch if lease else None,
                since=datetime.fromtimestamp(lease.acquired_ms / 1000, UTC) if lease else None,
                lag=info.lag if info else None,
                pending=info.pending if info else 0,
            )
        )
    return result
