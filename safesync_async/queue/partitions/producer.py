"""Publishing to a partitioned stream: each message to its key's partition."""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from ...errors import ConfigurationError
from ...metrics import DEFAULT_REGISTRY, RegistryArg
from ..client import RedisClient
from ..codec import Codec
from ..producer import QueueProducer
from .layout import PartitionedStream
from .leases import check_partition_count

__all__ = ["PartitionedProducer"]


class PartitionedProducer:
    """Publishes to a :class:`PartitionedStream`: a message with ordering key ``key`` goes
    to partition ``crc32(key) % partitions`` and carries the key (so the partition's
    owner handles one key's messages one at a time, in order); messages without a key go
    round robin over the partitions. The options are :class:`QueueProducer`'s, applied to
    every partition. The first publication checks the partition count recorded in Redis
    (:class:`ConfigurationError` if it differs)."""

    def __init__(
        self,
        redis: RedisClient,
        stream: PartitionedStream,
        *,
        codec: Codec[Any] | None = None,
        trace_context: bool = True,
        wait_replicas: int = 0,
        wait_timeout_ms: int = 1_000,
        registry: RegistryArg = DEFAULT_REGISTRY,
    ) -> None:
        if not isinstance(stream, PartitionedStream):
            raise ConfigurationError("PartitionedProducer needs a PartitionedStream")
        self.stream = stream
        self._partitions = [
            QueueProducer(
                redis,
                key,
                codec=codec,
                trace_context=trace_context,
                wait_replicas=wait_replicas,
                wait_timeout_ms=wait_timeout_ms,
                registry=registry,
            )
            for key in stream.stream_keys()
        ]
        self._redis = redis
        self._checked = False
        self._next = itertools.count()

    def partition_of(self, key: str | bytes | None) -> int:
        """The partition a message with ordering key ``key`` goes to (None: the next one
        round robin)."""
        if key is None:
            return next(self._next) % self.stream.partitions
        return self.stream.partition_of(key)

    async def publish(
        self,
        payload: Any,
        *,
        key: str | bytes | None = None,
        idempotency_key: str | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> tuple[int, str]:
        """Add one entry to its key's partition; returns (partition, entry id)."""
        await self._check()
        partition = self.partition_of(key)
        entry_id = await self._partitions[partition].publish(
            payload, idempotency_key=idempotency_key, headers=headers, key=key
        )
        return partition, entry_id

    async def publish_batch(
        self,
        payloads: Iterable[Any],
        *,
        keys: Sequence[str | bytes | None] | None = None,
        chunk_size: int = 500,
    ) -> list[tuple[int, str]]:
        """Add many entries (pipelined per partition); returns (partition, entry id) per
        payload, in order. Within a partition, entries keep the order given. Not atomic,
        like :meth:`QueueProducer.publish_batch`."""
        items = list(payloads)
        if keys is not None and len(keys) != len(items):
            raise ConfigurationError(f"{len(keys)} keys for {len(items)} payloads")
        await self._check()
        routed: dict[int, list[int]] = {}
        for index in range(len(items)):
            key = None if keys is None else keys[index]
            routed.setdefault(self.partition_of(key), []).append(index)
        result: list[tuple[int, str]] = [(0, "")] * len(items)
        for partition, indexes in routed.items():
            ids = await self._partitions[partition].publish_batch(
                [items[i] for i in indexes],
                keys=None if keys is None else [keys[i] for i in indexes],
                chunk_size=chunk_size,
            )
            for index, entry_id in zip(indexes, ids, strict=True):
                result[index] = (partition, entry_id)
        return result

    async def _check(self) -> None:
        if not self._checked:
            await check_partition_count(self._redis, self.stream)
            self._checked = True
