"""Consumer processes killed with SIGKILL at every failpoint and at random busy times, killed
while dead-lettering poison, and stopped with SIGTERM under load: with the inbox nothing
is lost and no effect is duplicated."""

from __future__ import annotations

import asyncio
import random
import signal
from collections.abc import Callable
from typing import Any

import pytest
from redis.asyncio import Redis
from sqlalchemy.ext.asyncio import AsyncEngine

from safesync_async import Inbox

from ..support.checker import add_entry, count_delivery
from ..support.reliability import Recorder
from .conftest import Worker, effect_rows, publish_plain, until

pytestmark = pytest.mark.faults

FAMILY = "Delivery under faults"
KILLED = -signal.SIGKILL

# failpoint -> the hits at which successive runs are killed (the fast variant uses the first)
KILL_HITS = {
    "consumer.after_fetch": (3, 12, 30),
    "consumer.in_handler": (40, 400, 900),
    "consumer.before_commit": (70, 300, 700),
    "consumer.after_commit": (100, 9, 500),
    "ack.before": (5, 12, 30),
    "ack.after": (5, 15, 25),
}


def _kill_params() -> list[Any]:
    params = []
    for point, hits in KILL_HITS.items():
        params.append(pytest.param(point, hits[:1], 300, id=point))
        params.append(
            pytest.param(point, hits, 2_000, id=f"{point}-x{len(hits)}", marks=pytest.mark.slow)
        )
    return params


def _consumer_args(stream: str, effects: str, inbox: Inbox, *extra: str) -> list[str]:
    return [
        "consumer", "--stream", stream, "--group", "g", "--effects", effects,
        "--inbox", inbox.table.name, "--concurrency", "8", *extra,
    ]  # fmt: skip


@pytest.mark.parametrize(("point", "hits", "size"), _kill_params())
async def test_consumer_killed_at_failpoint(
    engine: AsyncEngine,
    redis: Redis,
    stream: str,
    effects: str,
    inbox: Inbox,
    workers: Callable[..., Worker],
    reliability: Recorder,
    point: str,
    hits: tuple[int, ...],
    size: int,
) -> None:
    """A consumer SIGKILLed at the failpoint (once per run), then restarted until the stream
    is drained: with the inbox nothing is lost, no effect is duplicated, nothing is left
    pending."""
    keys = await publish_plain(redis, stream, size)
    args = _consumer_args(stream, effects, inbox)
    kills = 0
    for at in hits:
        worker = workers(*args, failpoints=f"{point}=kill@{at}")
        code = await worker.wait()
        assert code in (0, KILLED), worker.stderr
        kills += code == KILLED
    final = workers(*args)
    assert await final.wait() == 0, final.stderr
    counts = await count_delivery(
        redis, engine, stream=stream, group="g", effects=effects, sent=keys
    )
    reliability.record(FAMILY, f"consumer SIGKILL at `{point}`, inbox", **counts.row(faults=kills))
    assert kills == len(hits)
    assert (counts.lost, counts.duplicated, counts.left_pending) == (0, 0, 0), counts
    assert counts.applied == size


@pytest.mark.parametrize(
    ("size", "rounds"),
    [pytest.param(600, 4, id="fast"), pytest.param(3_000, 12, id="long", marks=pytest.mark.slow)],
)
async def test_consumer_killed_at_random_busy_times(
    engine: AsyncEngine,
    redis: Redis,
    stream: str,
    effects: str,
    inbox: Inbox,
    workers: Callable[..., Worker],
    reliability: Recorder,
    size: int,
    rounds: int,
) -> None:
    """Consumers SIGKILLed at random moments while they apply messages: nothing is lost
    and, with the inbox, no effect is duplicated."""
    keys = await publish_plain(redis, stream, size)
    args = _consumer_args(stream, effects, inbox)
    rng = random.Random(20_240_601)
    kills = 0
    for _ in range(rounds):
        before = await effect_rows(engine, effects)
        worker = workers(*args)

        async def busy(worker: Worker = worker, before: int = before) -> bool:
            return not worker.running or await effect_rows(engine, effects) > before

        await until(busy, timeout=60)
        await asyncio.sleep(rng.uniform(0.0, 0.02))
        if worker.running:
            worker.signal(signal.SIGKILL)
            kills += 1
        assert await worker.wait() in (0, KILLED), worker.stderr
    final = workers(*args)
    assert await final.wait() == 0, final.stderr
    counts = await count_delivery(
        redis, engine, stream=stream, group="g", effects=effects, sent=keys
    )
    reliability.record(
        FAMILY, "consumer SIGKILL at random busy times, inbox", **counts.row(faults=kills)
    )
    assert kills >= rounds - 1  # the last rounds may find the stream already drained
    assert (counts.lost, counts.duplicated, counts.left_pending) == (0, 0, 0), counts


@pytest.mark.parametrize("point", ["dead_letter.before", "dead_letter.after"])
async def test_consumer_killed_while_dead_lettering(
    engine: AsyncEngine,
    redis: Redis,
    stream: str,
    effects: str,
    inbox: Inbox,
    workers: Callable[..., Worker],
    reliability: Recorder,
    point: str,
) -> None:
    """A consumer SIGKILLed just before or just after writing a dead letter (poison present):
    every poison entry ends in the dead-letter stream exactly once, every good message is
    applied once."""
    keys: list[str] = []
    poison = [b"{not json", b"\xff\xfe\xfd", b'{"n": ', b"[[[", b"[1, 2]"]  # the last fails
    for raw in poison:
        keys += await publish_plain(redis, stream, 40)
        keys.append(f"id:{await add_entry(redis, stream, {b'data': raw})}")
    keys += await publish_plain(redis, stream, 40)
    args = _consumer_args(stream, effects, inbox, "--max-deliveries", "2")
    worker = workers(*args, failpoints=f"{point}=kill@2")
    assert await worker.wait() == KILLED, worker.stderr
    final = workers(*args)
    assert await final.wait() == 0, final.stderr
    counts = await count_delivery(
        redis, engine, stream=stream, group="g", effects=effects, sent=keys
    )
    reliability.record(
        FAMILY,
        f"consumer SIGKILL at `{point}` with poison, inbox",
        **counts.row(
            faults=1, poison=len(poison), dead_letter_duplicates=counts.dead_letter_duplicates
        ),
    )
    assert (counts.lost, counts.duplicated, counts.left_pending) == (0, 0, 0), counts
    assert counts.dead_lettered_total == len(poison)
    assert counts.dead_letter_duplicates == 0
    assert counts.dead_lettered.get("undecodable") == len(poison) - 1
    assert counts.applied == len(keys) - len(poison)


@pytest.mark.parametrize(
    "size",
    [pytest.param(2_000, id="fast"), pytest.param(10_000, id="long", marks=pytest.mark.slow)],
)
async def test_sigterm_under_load(
    engine: AsyncEngine,
    redis: Redis,
    stream: str,
    effects: str,
    inbox: Inbox,
    workers: Callable[..., Worker],
    reliability: Recorder,
    size: int,
) -> None:
    """SIGTERM to a busy consumer process: it exits with code 0 within its drain timeout,
    every committed message is acked, unstarted ones are handed back (delivery refunded,
    claimable at once), and a successor applies the rest exactly once."""
    keys = await publish_plain(redis, stream, size)
    drain_timeout = 5.0
    args = _consumer_args(stream, effects, inbox)
    worker = workers(*args, "--graceful", "--hang-ms", "20", "--drain-timeout", str(drain_timeout))

    async def busy() -> bool:
        return await effect_rows(engine, effects) >= 40

    await until(busy, timeout=60)
    loop = asyncio.get_running_loop()
    stopped_at = loop.time()
    worker.signal(signal.SIGTERM)
    code = await worker.wait(timeout=drain_timeout + 20)
    stop_seconds = loop.time() - stopped_at
    at_stop = await count_delivery(
        redis, engine, stream=stream, group="g", effects=effects, sent=keys
    )
    pending: list[dict[str, Any]] = await redis.xpending_range(stream, "g", "-", "+", size)
    final = workers(*args)
    assert await final.wait() == 0, final.stderr
    counts = await count_delivery(
        redis, engine, stream=stream, group="g", effects=effects, sent=keys
    )
    reliability.record(
        FAMILY,
        "consumer SIGTERM under load (graceful drain), inbox",
        **counts.row(
            faults=1,
            applied_at_stop=at_stop.applied,
            committed_unacked=at_stop.applied_but_pending,
            handed_back=at_stop.left_pending,
            stop_s=stop_seconds,
        ),
    )
    assert code == 0, worker.stderr
    assert stop_seconds < drain_timeout + 3
    assert at_stop.applied_but_pending == 0  # every committed message was acked
    assert all(entry["times_delivered"] == 0 for entry in pending)  # handed back, refunded
    assert all(entry["time_since_delivered"] > 10**9 for entry in pending)  # claimable now
    assert (counts.lost, counts.duplicated, counts.left_pending) == (0, 0, 0), counts
