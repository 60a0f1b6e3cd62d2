"""The stream deleted under a consumer that waits in a blocking read (Redis answers the
read with ``UNBLOCKED the stream key no longer exists``): the missing-group policy
recreates stream and group, and consumption goes on."""

from __future__ import annotations

import pytest
from redis.asyncio import Redis
from sqlalchemy.ext.asyncio import AsyncEngine

from safesync_async import Inbox, QueueConsumer, QueueProducer, create_redis_client

from ..queue.helpers import wait_until
from ..support.checker import count_delivery
from ..support.reliability import Recorder
from .conftest import PrivateServers, effect_handler, publish_keyed, queue_config, running, until

pytestmark = pytest.mark.faults

STREAM = "jobs"


async def _blocked(redis: Redis) -> bool:
    """Whether the consumer's client (named ``consumer``) waits in a blocking read."""
    return any(
        c.get("name") == "consumer" and c.get("cmd") == "xreadgroup" and "b" in c.get("flags", "")
        for c in await redis.client_list()
    )


async def test_stream_deleted_during_a_blocking_read(
    engine: AsyncEngine,
    effects: str,
    inbox: Inbox,
    private_servers: PrivateServers,
    reliability: Recorder,
) -> None:
    """100 messages applied, then the stream is deleted while the consumer blocks in
    XREADGROUP: the consumer recreates stream and group (counted), keeps running, and the
    100 messages published afterwards are applied exactly once, nothing left pending."""
    server = private_servers.redis(appendonly=True)
    admin = create_redis_client(server.url)
    redis = create_redis_client(server.url, block_ms=2_000, client_name="consumer")
    producer = QueueProducer(admin, STREAM, registry=None)
    consumer = QueueConsumer(
        redis, queue_config(STREAM, block_ms=2_000), inbox=inbox, registry=None
    )
    try:
        async with running(consumer, effect_handler(effects), engine=engine) as task:
            before, unknown = await publish_keyed(producer, range(100), "before-")
            await until(lambda: consumer.statistics().acked == 100, timeout=30)
            await wait_until(lambda: _blocked(admin), timeout=10)
            await admin.delete(STREAM)
            detection = await until(lambda: consumer.statistics().groups_recreated == 1, timeout=10)
            after, lost = await publish_keyed(producer, range(100), "after-")
            unknown += lost
            await until(lambda: consumer.statistics().acked == 200, timeout=30)
            assert not task.done()
        counts = await count_delivery(
            admin, engine, stream=STREAM, group="g", effects=effects, sent=after, unknown=unknown
        )
    finally:
        await redis.aclose()
        await admin.aclose()
    reliability.record(
        "Delivery under faults",
        "stream deleted (DEL) while the consumer blocks in XREADGROUP, inbox",
        **counts.row(faults=1, applied_before_deletion=len(before)),
    )
    reliability.record(
        "Server-fault timings",
        "stream deleted during a blocking read: DEL to group recreated",
        detection_s=detection,
    )
    assert (counts.lost, counts.duplicated, counts.left_pending) == (0, 0, 0), counts
    assert counts.applied == len(after) == 100
