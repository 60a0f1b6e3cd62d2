"""What is particular to Redis Cluster, on the session's private cluster: the client
factory and checks, the key layout in use, the refusal of a dead-letter stream in another
slot, the producer's replication wait, the health report and the CLI."""

from __future__ import annotations

import json
from typing import Any

import anyio
import pytest
from redis.asyncio import Redis
from redis.asyncio.cluster import RedisCluster
from typer.testing import CliRunner

from safesync_async import (
    ConfigurationError,
    QueueConfig,
    QueueConsumer,
    QueueError,
    QueueMessage,
    QueueProducer,
    ReplicationError,
    check_redis_client,
    create_redis_client,
    dead_letter_key,
    is_cluster,
    server_info,
    stream_health,
)
from safesync_async.cli import app
from safesync_async.queue._streams import GroupStream
from safesync_async.queue.keys import hash_slot, legacy_dead_letter_key

from ..support.cluster import PrivateRedisCluster
from ..support.settings import REDIS_URL
from .helpers import pending_count


@pytest.fixture
def redis_server() -> str:
    """Every test of this module that uses ``redis`` runs on the cluster."""
    return "cluster"


async def test_factory_returns_a_cluster_client_with_the_same_policy(
    redis_cluster: PrivateRedisCluster,
) -> None:
    """cluster=True gives a RedisCluster whose node connections get the socket timeout,
    keepalive and single retry of the standalone client; the check accepts it and the
    server report covers the masters (AOF on all of them)."""
    client = create_redis_client(redis_cluster.url, cluster=True, block_ms=2_000)
    try:
        assert isinstance(client, RedisCluster) and is_cluster(client)
        kwargs = client.get_connection_kwargs()
        assert kwargs["socket_timeout"] == 7.0 and kwargs["socket_keepalive"]
        assert client.retry.get_retries() == 1
        assert check_redis_client(client, block_ms=2_000) == []
        with pytest.raises(ConfigurationError):
            check_redis_client(client, block_ms=10_000)
        info = await server_info(client)
        assert (info.name, info.version[:2], info.persistence) == ("redis", (7, 0), "aof")
    finally:
        await client.aclose()
    assert not is_cluster(Redis())


async def test_dead_letters_land_in_the_streams_slot(redis: Any, stream: str) -> None:
    """A poison entry is dead-lettered (XADD + XACK in one transaction) to the default key,
    which shares the stream's slot; nothing stays pending."""
    await redis.xadd(stream, {"data": b"not json"})
    consumer = QueueConsumer(
        redis,
        QueueConfig(stream_key=stream, consumer_group="g", consumer_name="c", block_ms=100),
        registry=None,
    )

    async def handler(message: QueueMessage[Any]) -> None:
        raise AssertionError("a poison entry reached the handler")

    with anyio.fail_after(30):
        await consumer.run_until_drained(handler)
    key = dead_letter_key(stream)
    assert hash_slot(key) == hash_slot(stream)
    assert await redis.xlen(key) == 1
    assert await pending_count(redis, stream, "g") == 0


async def test_dead_letter_stream_in_another_slot_is_refused(redis: Any, stream: str) -> None:
    """On a cluster client an explicit dead-letter stream in another slot is refused when
    the consumer is built; one with the stream's hash tag is accepted; and a transaction
    across slots surfaces as a QueueError, not a raw redis-py exception."""
    config = QueueConfig(stream_key=stream, consumer_group="g", dead_letter_stream=f"{stream}:x")
    with pytest.raises(ConfigurationError, match="hash slot"):
        QueueConsumer(redis, config, registry=None)
    tagged = QueueConfig(
        stream_key="{" + stream + "}", consumer_group="g", dead_letter_stream="{" + stream + "}:x"
    )
    QueueConsumer(redis, tagged, registry=None)
    await redis.xgroup_create(stream, "g", id="0", mkstream=True)
    entry = (await redis.xadd(stream, {"data": b"1"})).decode()
    operations = GroupStream(redis, stream, "g", "c")
    await operations.read_new(1, None)
    with pytest.raises(QueueError, match="hash slot") as caught:
        await operations.dead_letter(f"{stream}:x", {b"data": b"1"}, entry)
    assert caught.value.__cause__ is not None


async def test_replication_wait_confirms_or_raises(redis: Any, stream: str) -> None:
    """With wait_replicas=1 (each master has one replica) publications are confirmed,
    single and batched; asking for 2 raises ReplicationError carrying the ids that were
    added and how many replicas acknowledged them."""
    producer = QueueProducer(redis, stream, wait_replicas=1, wait_timeout_ms=2_000, registry=None)
    first = await producer.publish({"n": 1})
    batch = await producer.publish_batch(({"n": n} for n in range(2, 40)), chunk_size=10)
    assert await redis.xlen(stream) == 1 + len(batch)
    greedy = QueueProducer(redis, stream, wait_replicas=2, wait_timeout_ms=100, registry=None)
    with pytest.raises(ReplicationError) as caught:
        await greedy.publish({"n": 99})
    assert (caught.value.acknowledged, caught.value.required) == (1, 2)
    [added] = caught.value.entry_ids
    assert [e[0].decode() for e in await redis.xrange(stream, min=added, max=added)] == [added]
    assert first < added


async def test_replication_wait_on_a_standalone_redis_without_replicas(stream: str) -> None:
    """The shared standalone Redis has no replica: a publication asking for one is added
    but reported with ReplicationError (acknowledged 0), never silently confirmed; a
    wait longer than the socket timeout is refused up front."""
    client = create_redis_client(REDIS_URL, block_ms=200)
    try:
        producer = QueueProducer(client, stream, wait_replicas=1, wait_timeout_ms=50)
        with pytest.raises(ReplicationError) as caught:
            await producer.publish({"n": 1})
        assert caught.value.acknowledged == 0 and await client.xlen(stream) == 1
        with pytest.raises(ConfigurationError, match="socket_timeout"):
            QueueProducer(client, stream, wait_replicas=1, wait_timeout_ms=60_000)
    finally:
        await client.delete(stream)
        await client.aclose()


async def test_health_reports_dead_letters_old_and_new(redis: Any, stream: str) -> None:
    """The health report reads the stream and the default dead-letter stream on a
    cluster, and counts dead letters left under the key used before the layout."""
    await QueueProducer(redis, stream, registry=None).publish({"n": 1})
    await redis.xadd(dead_letter_key(stream), {"x": "1"})
    await redis.xadd(legacy_dead_letter_key(stream), {"x": "1"})
    await redis.xadd(legacy_dead_letter_key(stream), {"x": "2"})
    health = await stream_health(redis, stream)
    assert (health.length, health.dead_letters, health.legacy_dead_letters) == (1, 1, 2)
    assert health.persistence == "aof"
    assert "under the old key" in health.describe()
    named = await stream_health(redis, stream, dead_letter_stream=legacy_dead_letter_key(stream))
    assert (named.dead_letters, named.legacy_dead_letters) == (2, 0)


async def test_cli_on_a_cluster(
    redis: Any, stream: str, redis_cluster: PrivateRedisCluster
) -> None:
    """``safesync --cluster`` lists streams across the masters and reports a stream's
    health (dead letters under the new key, old ones flagged)."""
    await QueueProducer(redis, stream, registry=None).publish({"n": 1})
    await redis.xgroup_create(stream, "g", id="0")
    await redis.xadd(legacy_dead_letter_key(stream), {"x": "1"})

    def invoke(*args: str) -> Any:
        argv = ["--redis", redis_cluster.url, "--cluster", "--json", *args]
        return CliRunner().invoke(app, argv)

    listed = await anyio.to_thread.run_sync(invoke, "streams", "--pattern", f"{stream}*")
    assert listed.exit_code == 0, listed.output
    found = [s["stream"] for s in json.loads(listed.stdout)["streams"]]
    assert found == [stream, legacy_dead_letter_key(stream)]  # scanned on every master
    status = await anyio.to_thread.run_sync(invoke, "status", stream)
    report = json.loads(status.stdout)
    assert report["dead_letter_stream"] == dead_letter_key(stream)
    assert (report["length"], report["legacy_dead_letters"]) == (1, 1)
