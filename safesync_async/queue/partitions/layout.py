"""The layout of a partitioned stream: its partition streams, where a key goes, and the
keys of the ownership bookkeeping.

A partitioned stream ``orders`` with 8 partitions is 8 ordinary streams, ``{orders/0}`` to
``{orders/7}``. Each name is its own hash tag, so on Redis Cluster each partition has its
own hash slot (the partitions spread over the masters), and everything derived from a
partition (its dead letters ``{orders/3}:dead``, its lease, its epoch counter) lives in
that partition's slot. A message goes to partition ``crc32(key) % partitions``, CRC-32 as
in zlib, Java's ``java.util.zip.CRC32`` or Go's ``crc32.ChecksumIEEE``, of the key's
UTF-8 bytes, so producers in other languages can route the same way.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass

from ...errors import ConfigurationError

__all__ = ["MAX_PARTITIONS", "PartitionedStream", "partition_for"]

#: Most partitions one stream may have.
MAX_PARTITIONS = 1024


def partition_for(key: bytes | str, partitions: int) -> int:
    """The partition of ``key``: ``crc32(key) % partitions`` (str keys as UTF-8)."""
    raw = key.encode("utf-8", "surrogateescape") if isinstance(key, str) else key
    return zlib.crc32(raw) % partitions


@dataclass(frozen=True, slots=True)
class PartitionedStream:
    """One logical stream made of ``partitions`` streams (see the module for the keys).

    The number of partitions is fixed for the life of the stream: a key's partition
    depends on it. Producers and consumers check it against the count recorded in Redis
    (``{name}:partitions``) and refuse to work with a different one.
    """

    name: str
    partitions: int

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name:
            raise ConfigurationError("a partitioned stream needs a non-empty name")
        if "{" in self.name or "}" in self.name:
            raise ConfigurationError(
                f"partitioned stream name {self.name!r} contains a brace: its partitions are "
                "named '{<name>/<n>}' so that each has its own hash slot; choose a name "
                "without '{' or '}'"
            )
        if (
            isinstance(self.partitions, bool)
            or not isinstance(self.partitions, int)
            or not 1 <= self.partitions <= MAX_PARTITIONS
        ):
            raise ConfigurationError(
                f"partitions must be an integer from 1 to {MAX_PARTITIONS}, not {self.partitions!r}"
            )

    def stream_key(self, partition: int) -> str:
        """The stream of ``partition``: ``{name/partition}``."""
        self._check(partition)
        return "{" + f"{self.name}/{partition}" + "}"

    def stream_keys(self) -> list[str]:
        """Every partition's stream, in partition order."""
        return [self.stream_key(p) for p in range(self.partitions)]

    def partition_of(self, key: bytes | str) -> int:
        """The partition messages with ordering key ``key`` go to."""
        return partition_for(key, self.partitions)

    def lease_key(self, partition: int, group: str) -> str:
        """The lease of ``partition`` for consumer ``group`` (in the partition's slot)."""
        return f"{self.stream_key(partition)}:lease:{group}"

    def epoch_key(self, partition: int, group: str) -> str:
        """The counter of ``partition``'s acquisitions by ``group`` (the fencing epoch)."""
        return f"{self.stream_key(partition)}:epoch:{group}"

    def members_key(self, group: str) -> str:
        """The live consumers of ``group``: a sorted set scored by heartbeat expiry."""
        return "{" + self.name + "}" + f":members:{group}"

    @property
    def count_key(self) -> str:
        """Where the number of partitions is recorded."""
        return "{" + self.name + "}:partitions"

    def _check(self, partition: int) -> None:
        if isinstance(partition, bool) or not isinstance(partition, int):
            raise ConfigurationError(f"a partition is an integer, not {partition!r}")
        if not 0 <= partition < self.partitions:
            raise ConfigurationError(
                f"partition {partition} is outside 0..{self.partitions - 1} of {self.name!r}"
            )
