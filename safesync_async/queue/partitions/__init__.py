"""Partitioned streams: per-key order across processes, with exclusive partition ownership
(leases in Redis) and fencing (epochs checked in the handler's transaction)."""

from __future__ import annotations

from .consumer import PartitionedConsumer
from .fence import EpochFence
from .layout import PartitionedStream, partition_for
from .ownership import PartitionOwnership
from .producer import PartitionedProducer
from .status import PartitionStatus, partition_status

__all__ = [
    "EpochFence",
    "PartitionOwnership",
    "PartitionStatus",
    "PartitionedConsumer",
    "PartitionedProducer",
    "PartitionedStream",
    "partition_for",
    "partition_status",
]
