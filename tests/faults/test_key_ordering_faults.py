"""Key-ordered consumer processes killed with SIGKILL at random busy times, and stopped
with SIGTERM, then restarted under the same consumer name: each restart reads its own
pending entries first, so every key's messages are still applied in stream order, and
with the inbox none is lost or applied twice."""

from __future__ import annotations

import asyncio
import random
import signal
from collections import defaultdict
from collections.abc import Callable

import pytest
from redis.asyncio import Redis
from sqlalchemy.ext.asyncio import AsyncEngine

from safesync_async import DbSession, Inbox, QueueProducer

from ..support.checker import count_delivery
from ..support.reliability import Recorder
from .conftest import Worker, effect_rows, until

pytestmark = pytest.mark.faults

FAMILY = "Delivery under faults"
KEYS = 3


async def _order_breaks(engine: AsyncEngine, effects: str) -> int:
    """Effects whose number is not above the previous one of its key (n % KEYS), in the
    order they were written."""
    async with DbSession(engine, registry=None) as session:
        rows = await session.fetch_all(f"SELECT n FROM `{effects}` ORDER BY seq")
    last: dict[int, int] = defaultdict(lambda: -1)
    breaks = 0
    for row in rows:
        n = int(row["n"])
        breaks += n <= last[n % KEYS]
        last[n % KEYS] = max(last[n % KEYS], n)
    return breaks


@pytest.mark.parametrize("stop", [signal.SIGKILL, signal.SIGTERM], ids=["sigkill", "sigterm"])
async def test_key_order_survives_restarts(
    engine: AsyncEngine,
    redis: Redis,
    stream: str,
    effects: str,
    inbox: Inbox,
    workers: Callable[..., Worker],
    reliability: Recorder,
    stop: signal.Signals,
) -> None:
    """1,200 messages over 3 keys; a key-ordered consumer (concurrency 8) is stopped by
    ``stop`` at random busy moments four times and restarted under the same name: every
    key's messages are applied in stream order, none lost, none twice, none pending."""
    ids = await QueueProducer(redis, stream, registry=None).publish_batch(
        [{"n": n} for n in range(1_200)], keys=[f"k{n % KEYS}" for n in range(1_200)]
    )
    args = [
        "consumer", "--stream", stream, "--group", "g", "--effects", effects,
        "--inbox", inbox.table.name, "--concurrency", "8", "--ordering", "key",
        "--graceful", "--hang-ms", "2",
    ]  # fmt: skip
    rng = random.Random(20_261_201)
    stops = 0
    for _ in range(4):
        before = await effect_rows(engine, effects)
        worker = workers(*args)

        async def busy(worker: Worker = worker, before: int = before) -> bool:
            return not worker.running or await effect_rows(engine, effects) > before + 20

        await until(busy, timeout=60)
        await asyncio.sleep(rng.uniform(0.0, 0.05))
        if worker.running:
            worker.signal(stop)
            stops += 1
        assert await worker.wait() in (0, -signal.SIGKILL), worker.stderr
    final = workers(*args)
    assert await final.wait() == 0, final.stderr
    counts = await count_delivery(
        redis, engine, stream=stream, group="g", effects=effects, sent=[f"id:{i}" for i in ids]
    )
    breaks = await _order_breaks(engine, effects)
    reliability.record(
        FAMILY,
        f"key-ordered consumer stopped by {stop.name} and restarted, inbox",
        **counts.row(faults=stops, order_breaks=breaks),
    )
    assert stops >= 3
    assert breaks == 0
    assert (counts.lost, counts.duplicated, counts.left_pending) == (0, 0, 0), counts
    assert counts.applied == 1_200
