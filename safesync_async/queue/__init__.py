"""The queue half: Redis Streams consumers, producers, dead letters and health."""

from __future__ import annotations

from .client import (
    RedisClient,
    ServerInfo,
    check_redis_client,
    create_redis_client,
    is_cluster,
    server_info,
)
from .codec import Codec, JsonCodec
from .config import QueueConfig
from .consumer import ConsumerStatistics, QueueConsumer
from .dead_letters import DeadLetter, DeadLetterReason, parse_dead_letter
from .health import ConsumerHealth, GroupHealth, StreamHealth, stream_health
from .inbox import Inbox
from .keys import dead_letter_key
from .models import QueueMessage
from .outbox import Outbox, OutboxRelay, OutboxStatus
from .partitions import (
    EpochFence,
    PartitionedConsumer,
    PartitionedProducer,
    PartitionedStream,
    PartitionOwnership,
    PartitionStatus,
    partition_for,
    partition_status,
)
from .producer import QueueProducer
from .readiness import ConsumerReadiness
from .signals import install_signal_handlers

__all__ = [
    "Codec",
    "ConsumerHealth",
    "ConsumerReadiness",
    "ConsumerStatistics",
    "DeadLetter",
    "DeadLetterReason",
    "EpochFence",
    "GroupHealth",
    "Inbox",
    "JsonCodec",
    "Outbox",
    "OutboxRelay",
    "OutboxStatus",
    "PartitionOwnership",
    "PartitionStatus",
    "PartitionedConsumer",
    "PartitionedProducer",
    "PartitionedStream",
    "QueueConfig",
    "QueueConsumer",
    "QueueMessage",
    "QueueProducer",
    "RedisClient",
    "ServerInfo",
    "StreamHealth",
    "check_redis_client",
    "create_redis_client",
    "dead_letter_key",
    "install_signal_handlers",
    "is_cluster",
    "parse_dead_letter",
    "partition_for",
    "partition_status",
    "server_info",
    "stream_health",
]
