"""Effectively-once processing: consumers and relays killed with SIGKILL at chosen points
and at random times; the inbox turns every redelivery into a no-op and the outbox
publishes exactly what committed."""

from __future__ import annotations

import asyncio
import os
import random
import signal
import subprocess
import sys
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine

from safesync_async import (
    DbSession,
    Inbox,
    Outbox,
    OutboxRelay,
    QueueConfig,
    QueueConsumer,
    QueueMessage,
    QueueProducer,
)

from ..conftest import TableFactory
from ..support.backends import Backend
from ..support.checker import effect_key
from .helpers import pending_count

EFFECTS = (
    "CREATE TABLE {table} (seq {autoinc}, message_id VARCHAR(40), message_key VARCHAR(200), n INT)"
)
KILL_POINTS = [
    ("consumer.after_fetch", 17),
    ("consumer.in_handler", 61),
    ("consumer.before_commit", 105),
    ("consumer.after_commit", 150),
    ("ack.before", 40),
    ("ack.after", 30),
    ("consumer.after_commit", 9),
]


def _start(backend: Backend, *args: str, failpoints: str = "") -> subprocess.Popen[bytes]:
    """A worker process on the backend under test, with the given failpoints."""
    env = dict(os.environ, SAFESYNC_FAILPOINTS=failpoints, SAFESYNC_DATABASE_URL=backend.url)
    return subprocess.Popen(
        [sys.executable, "-m", "tests.support.worker", *args],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )


async def _wait(process: subprocess.Popen[bytes], timeout: float = 60) -> int:
    """Wait for the process to exit; its stderr is kept in ``process.error_output``."""
    loop = asyncio.get_running_loop()
    _, err = await loop.run_in_executor(None, lambda: process.communicate(timeout=timeout))
    process.error_output = err.decode(errors="replace")  # type: ignore[attr-defined]
    return process.returncode


async def _effects(engine: AsyncEngine, table: str, column: str = "message_id") -> tuple[int, int]:
    async with DbSession(engine) as s:
        row = await s.fetch_one(f"SELECT COUNT(*) AS n, COUNT(DISTINCT {column}) AS d FROM {table}")
    assert row is not None
    return int(row["n"]), int(row["d"])


@pytest.fixture
async def inbox(engine: AsyncEngine, unique_name: Any) -> Any:
    box = Inbox(unique_name("inbox"))
    await box.create_table(engine)
    yield box
    async with engine.begin() as conn:
        await conn.run_sync(box.table.drop)


@pytest.mark.faults
@pytest.mark.parametrize("with_inbox", [True, False], ids=["inbox", "no-inbox"])
async def test_consumers_killed_at_every_point(
    engine: AsyncEngine,
    backend: Backend,
    make_table: TableFactory,
    redis: Any,
    stream: str,
    inbox: Inbox,
    with_inbox: bool,
) -> None:
    """Consumer processes SIGKILLed at each failpoint and at random times over 1,000
    messages: nothing is lost; with the inbox no effect is duplicated; without it the
    duplicates are no more than the kills."""
    table = await make_table(EFFECTS)
    total = 1_000
    await QueueProducer(redis, stream).publish_batch({"n": i} for i in range(total))
    args = ["consumer", "--stream", stream, "--group", "g", "--effects", table]
    if with_inbox:
        args += ["--inbox", inbox.table.name, "--concurrency", "8"]
    else:  # one message at a time: a kill can leave at most one committed message unacked
        args += ["--concurrency", "1", "--prefetch", "0"]
    kills = 0
    for point, at in KILL_POINTS:
        process = _start(backend, *args, failpoints=f"{point}=kill@{at}")
        code = await _wait(process)
        assert code in (0, -signal.SIGKILL), process.error_output  # type: ignore[attr-defined]
        kills += code == -signal.SIGKILL
    rng = random.Random(42)
    for _ in range(4):  # random times: once the worker is busy, kill it within 20 ms
        before = (await _effects(engine, table))[0]
        process = _start(backend, *args)
        while process.poll() is None and (await _effects(engine, table))[0] == before:
            await asyncio.sleep(0.01)
        await asyncio.sleep(rng.uniform(0.0, 0.02))
        if process.poll() is None:
            process.kill()
            kills += 1
        await _wait(process)
    final = _start(backend, *args)
    assert await _wait(final, timeout=120) == 0, final.error_output  # type: ignore[attr-defined]
    rows, distinct = await _effects(engine, table)
    assert distinct == total  # nothing lost
    assert kills >= len(KILL_POINTS) + 3
    if with_inbox:
        assert rows == total  # no duplicate effect
    else:
        assert rows - total <= kills
    assert await pending_count(redis, stream, "g") == 0


@pytest.mark.faults
async def test_batch_replayed_after_kill_is_applied_once(
    engine: AsyncEngine,
    backend: Backend,
    make_table: TableFactory,
    redis: Any,
    stream: str,
    inbox: Inbox,
) -> None:
    """Batch mode: a worker killed after committing a batch and before acking it (and
    around the XACK) gets the whole batch again; the inbox applies every message once."""
    table = await make_table(EFFECTS)
    total = 2_000
    await QueueProducer(redis, stream).publish_batch({"n": i} for i in range(total))
    args = ["consumer", "--stream", stream, "--group", "g", "--effects", table]
    args += ["--inbox", inbox.table.name, "--concurrency", "4", "--batch-size", "25"]
    for point, at in (
        ("consumer.after_commit", 3),
        ("ack.before", 5),
        ("consumer.after_commit", 9),
    ):
        process = _start(backend, *args, failpoints=f"{point}=kill@{at}")
        assert await _wait(process) == -signal.SIGKILL, process.error_output  # type: ignore[attr-defined]
    final = _start(backend, *args)
    assert await _wait(final, timeout=120) == 0, final.error_output  # type: ignore[attr-defined]
    assert await _effects(engine, table) == (total, total)
    async with DbSession(engine) as session:
        replayed = await session.execute_scalar(
            f"SELECT COUNT(*) FROM {inbox.table.name} WHERE stream = :s", {"s": stream.encode()}
        )
    assert replayed == total
    assert await pending_count(redis, stream, "g") == 0


async def _fill_outbox(engine: AsyncEngine, outbox: Outbox, stream: str, count: int) -> None:
    for start in range(0, count, 500):
        async with DbSession(engine) as session:
            for n in range(start, min(count, start + 500)):
                await outbox.add(session, stream, {"n": n})


@pytest.fixture
async def outbox(engine: AsyncEngine, unique_name: Any) -> Any:
    box = Outbox(unique_name("outbox"))
    await box.create_table(engine)
    yield box
    async with engine.begin() as conn:
        await conn.run_sync(box.table.drop)


async def _consume_with_inbox(
    engine: AsyncEngine, redis: Any, stream: str, inbox: Inbox, table: str
) -> None:
    async def handler(message: QueueMessage[Any], session: DbSession) -> None:
        await session.execute(
            f"INSERT INTO {table} (message_id, message_key, n) VALUES (:id, :key, :n)",
            {"id": message.id, "key": effect_key(message), "n": message.payload["n"]},
        )

    config = QueueConfig(stream_key=stream, consumer_group="g", consumer_name="c", block_ms=100)
    consumer = QueueConsumer(redis, config, inbox=inbox)
    async with asyncio.timeout(120):
        await consumer.run_until_drained(handler, engine=engine)


@pytest.mark.faults
async def test_relay_killed_between_publish_and_mark_sent(
    engine: AsyncEngine,
    backend: Backend,
    make_table: TableFactory,
    redis: Any,
    stream: str,
    inbox: Inbox,
    outbox: Outbox,
) -> None:
    """A relay SIGKILLed after XADD and before marking the rows sent publishes them again
    after restart; the downstream consumer with an inbox applies each outbox message once."""
    table = await make_table(EFFECTS)
    await _fill_outbox(engine, outbox, stream, 300)
    killed = _start(
        backend, "relay", "--outbox", outbox.name, failpoints="relay.after_publish=kill@2"
    )
    assert await _wait(killed) == -signal.SIGKILL
    assert await redis.xlen(stream) == 100  # two batches of 50 published, one marked sent
    assert (await outbox.status(engine)).pending == 250
    finisher = _start(backend, "relay", "--outbox", outbox.name)
    assert await _wait(finisher) == 0
    assert await redis.xlen(stream) == 350  # 50 published twice
    assert (await outbox.status(engine)).pending == 0
    await _consume_with_inbox(engine, redis, stream, inbox, table)
    rows, distinct_keys = await _effects(engine, table, "message_key")
    assert (rows, distinct_keys) == (300, 300)


@pytest.mark.cluster
async def test_failed_transaction_publishes_nothing(
    engine: AsyncEngine, make_table: TableFactory, redis: Any, stream: str, outbox: Outbox
) -> None:
    """An endpoint-style transaction that writes a row and adds an outbox message and then
    fails leaves neither the row nor the message; a committed one leaves both."""
    table = await make_table("CREATE TABLE {table} (id INT PRIMARY KEY)")
    with pytest.raises(RuntimeError):
        async with DbSession(engine) as session:
            await session.execute(f"INSERT INTO {table} VALUES (1)")
            await outbox.add(session, stream, {"order": 1})
            raise RuntimeError("validation failed after the writes")
    async with DbSession(engine) as session:
        await session.execute(f"INSERT INTO {table} VALUES (2)")
        await outbox.add(session, stream, {"order": 2}, headers={"traceparent": "00-abc"})
    relay = OutboxRelay(engine, redis, outbox)
    assert await relay.relay_once() == 1
    assert await relay.relay_once() == 0
    async with DbSession(engine) as session:
        assert await session.fetch_all(f"SELECT id FROM {table}") == [{"id": 2}]
    [(entry_id, fields)] = await redis.xrange(stream)
    assert fields[b"data"] == b'{"order":2}'
    assert fields[b"traceparent"] == b"00-abc"
    assert fields[b"idempotency_key"].startswith(f"outbox:{outbox.name}:".encode())
    async with DbSession(engine) as session:
        row = await session.fetch_one(sa.select(outbox.table.c.entry_id, outbox.table.c.sent_at))
    assert row is not None and row["entry_id"] == entry_id.decode() and row["sent_at"]


@pytest.mark.cluster
async def test_two_relays_publish_each_row_once_in_order(
    engine: AsyncEngine,
    make_table: TableFactory,
    redis: Any,
    stream: str,
    inbox: Inbox,
    outbox: Outbox,
) -> None:
    """Two relays running together over 5,000 outbox rows: every row is published exactly
    once, in outbox-id order, and applied once by the consumer."""
    table = await make_table(EFFECTS)
    await _fill_outbox(engine, outbox, stream, 5_000)
    relays = [
        OutboxRelay(engine, redis, outbox, batch_size=100, poll_interval=0.02) for _ in range(2)
    ]
    async with asyncio.TaskGroup() as tasks:
        for relay in relays:
            tasks.create_task(relay.run())
        while (await outbox.status(engine)).pending:
            await asyncio.sleep(0.05)
        for relay in relays:
            relay.stop()
    assert sum(r.published for r in relays) == 5_000
    assert all(r.published > 0 for r in relays)  # both took part
    entries = await redis.xrange(stream)
    keys = [int(f[b"idempotency_key"].rsplit(b":", 1)[1]) for _, f in entries]
    assert len(keys) == 5_000 and keys == sorted(keys)
    await _consume_with_inbox(engine, redis, stream, inbox, table)
    assert await _effects(engine, table, "message_key") == (5_000, 5_000)


async def test_purge_and_status(
    engine: AsyncEngine, redis: Any, stream: str, inbox: Inbox, outbox: Outbox
) -> None:
    """Outbox status counts pending and sent rows; purges delete only old enough rows;
    create_sql gives DDL for migrations."""
    from datetime import timedelta

    await _fill_outbox(engine, outbox, stream, 10)
    status = await outbox.status(engine)
    assert (status.pending, status.sent) == (10, 0)
    assert status.oldest_pending_age_s is not None
    await OutboxRelay(engine, redis, outbox).relay_once()
    assert (await outbox.status(engine)).sent == 10
    assert await outbox.purge_sent(engine, timedelta(hours=1)) == 0
    assert await outbox.purge_sent(engine, timedelta(microseconds=1), batch_size=3) == 10
    message: QueueMessage[Any] = QueueMessage(id="1-1", stream=stream, group="g", payload={})
    async with DbSession(engine) as session:
        assert await inbox.record(session, "g", message)
        assert not await inbox.record(session, "g", message)
    assert await inbox.seen(engine, stream, "g", Inbox.message_key(message))
    assert await inbox.purge(engine, timedelta(hours=1)) == 0
    assert await inbox.purge(engine, timedelta(microseconds=1)) == 1
    assert "CREATE TABLE" in inbox.create_sql(engine) and "PRIMARY KEY" in inbox.create_sql(engine)
    assert "CREATE INDEX" in outbox.create_sql(engine)
