"""The ceiling: a hand-written loop on the raw drivers (asyncmy, redis.asyncio).

One reader keeps up to ``2 x concurrency`` entries queued with XREADGROUP batches,
``concurrency`` workers each own an asyncmy connection and run UPDATE + COMMIT per
message, and one acker sends the ids of committed messages in multi-id XACKs (while one
XACK is on the wire, the next batch gathers). No error handling, no recovery, no
metrics: the fastest honest loop that still acks only after the commit.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import asyncmy
import redis.asyncio
import sqlalchemy as sa

from ..drain import wait_until_drained
from ..settings import DRAIN_POLL_SECONDS
from ..workload import handler_sql
from .base import AsyncVariant

_READ_BLOCK_MS = 1_000


class RawLoop(AsyncVariant):
    """Reader, workers and acker as asyncio tasks; stops once the group is drained."""

    connections: list[Any]
    redis: redis.asyncio.Redis
    handled: int

    async def aprepare(self) -> None:
        url = sa.make_url(self.spec.database_url)
        self.connections = []
        for _ in range(self.spec.concurrency):
            connection = await asyncmy.connect(
                host=url.host or "127.0.0.1",
                port=url.port or 3306,
                user=url.username or "root",
                password=url.password or "",
                db=url.database,
                autocommit=False,
            )
            self.resources.push_async_callback(connection.ensure_closed)
            self.connections.append(connection)
        self.redis = redis.asyncio.Redis.from_url(self.spec.redis_url)
        self.resources.push_async_callback(self.redis.aclose)
        await self.redis.ping()
        self.handled = 0

    async def aconsume(self) -> dict[str, int]:
        depth = 2 * self.spec.concurrency
        queue: asyncio.Queue[tuple[bytes, dict[bytes, bytes]]] = asyncio.Queue()
        room = asyncio.Event()
        acks: list[bytes] = []
        acks_waiting = asyncio.Event()
        sql = handler_sql(self.spec.table, "format")
        spec = self.spec

        async def read() -> None:
            while True:
                free = depth - queue.qsize()
                if free < depth // 2:
                    room.clear()
                    await room.wait()
                    continue
                reply = await self.redis.xreadgroup(
                    spec.group, spec.consumer, {spec.stream: ">"}, count=free, block=_READ_BLOCK_MS
                )
                for entry in _entries(reply):
                    queue.put_nowait(entry)

        async def work(connection: Any) -> None:
            cursor = connection.cursor()
            while True:
                entry_id, fields = await queue.get()
                if queue.qsize() <= depth // 2:
                    room.set()
                payload = json.loads(fields[b"data"])
                await cursor.execute(sql, (payload["amount"], payload["account"]))
                await connection.commit()
                self.handled += 1
                acks.append(entry_id)
                acks_waiting.set()

        async def ack() -> None:
            while True:
                if not acks:
                    acks_waiting.clear()
                    await acks_waiting.wait()
                    continue
                ids = acks[:]
                acks.clear()
                await self.redis.xack(spec.stream, spec.group, *ids)

        async with asyncio.TaskGroup() as tasks:
            running = [tasks.create_task(read()), tasks.create_task(ack())]
            running += [tasks.create_task(work(c)) for c in self.connections]
            await wait_until_drained(self.redis, spec.stream, spec.group, DRAIN_POLL_SECONDS)
            for task in running:
                task.cancel()
        return {"handled": self.handled}


def _entries(reply: Any) -> list[tuple[bytes, dict[bytes, bytes]]]:
    """Entries of a one-stream XREADGROUP reply (RESP2 list or RESP3 map shape)."""
    if not reply:
        return []
    entries = next(iter(reply.values())) if isinstance(reply, dict) else reply[0][1]
    return [(entry_id, fields) for entry_id, fields in entries]
