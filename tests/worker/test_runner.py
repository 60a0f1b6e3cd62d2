"""``safesync worker`` as a subprocess against the real servers: two processes drain a
backlog, a SIGKILLed process is restarted, SIGTERM drains every process, a second signal
kills them, the metrics endpoint sums over processes. With the inbox nothing is lost, no
effect is duplicated and nothing is left pending."""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import Callable
from typing import Any

import pytest
from redis.asyncio import Redis
from sqlalchemy.ext.asyncio import AsyncEngine

from safesync_async import Inbox

from ..queue.helpers import wait_until
from ..support.checker import DeliveryCounts, count_delivery
from .conftest import Runner, app_env, effect_rows, publish, rows_per_worker

APP = "tests.worker.apps:effects"


async def settled(
    redis: Redis, engine: AsyncEngine, stream: str, effects: str, keys: list[str], timeout: float
) -> DeliveryCounts:
    """The delivery counts once every message is applied and nothing is pending (or the
    last counts after ``timeout``, for the asserts)."""
    latest: list[DeliveryCounts] = []

    async def done() -> bool:
        counts = await count_delivery(
            redis, engine, stream=stream, group="g", effects=effects, sent=keys
        )
        latest.append(counts)
        return counts.applied == len(keys) and counts.left_pending == 0

    try:
        await wait_until(done, timeout=timeout, interval=0.1)
    except TimeoutError:
        pass
    return latest[-1]


def gone(pid: int) -> bool:
    """True once no process (not even a zombie) has ``pid``."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] in ("Z", "X")
    except FileNotFoundError:
        return True


async def test_two_processes_drain_a_backlog_with_the_inbox(
    engine: AsyncEngine,
    redis: Redis,
    stream: str,
    effects: str,
    inbox: Inbox,
    runners: Callable[..., Runner],
) -> None:
    """Two worker processes drain a backlog: every message applied exactly once by one of
    them, both did some of the work, nothing pending, the endpoint's acked total is the sum
    over both processes, and SIGTERM stops the runner with exit code 0."""
    keys = await publish(redis, stream, 400)
    runner = runners(APP, "--workers", "2", env=app_env(stream, effects, inbox, hang_ms=10))
    counts = await settled(redis, engine, stream, effects, keys, timeout=60)
    assert (counts.lost, counts.duplicated, counts.left_pending) == (0, 0, 0), counts

    async def all_acked() -> bool:
        return await runner.metric("safesync_queue_messages_total", outcome="acked") == 400

    await wait_until(all_acked, timeout=10)
    per_worker = await rows_per_worker(engine, effects)
    runner.signal(signal.SIGTERM)
    assert await runner.wait() == 0, runner.stderr
    assert sorted(per_worker) == [0, 1] and sum(per_worker.values()) == 400, per_worker


@pytest.mark.faults
async def test_killed_process_is_restarted_and_nothing_is_lost(
    engine: AsyncEngine,
    redis: Redis,
    stream: str,
    effects: str,
    inbox: Inbox,
    runners: Callable[..., Runner],
) -> None:
    """A worker process SIGKILLed mid-run is restarted under the same consumer name with a
    new pid, the restart is logged and counted, the dead process's in-flight gauge does
    not linger, and with the inbox the backlog ends applied exactly once, nothing pending."""
    keys = await publish(redis, stream, 600)
    env = app_env(stream, effects, inbox, hang_ms=5)
    runner = runners(APP, "--workers", "2", "--log-format", "json", env=env)
    before = (await runner.wait_ready())["workers"][0]

    async def busy() -> bool:
        return await effect_rows(engine, effects) >= 60

    await wait_until(busy, timeout=30)
    os.kill(before["pid"], signal.SIGKILL)

    async def restarted() -> bool:
        code, document = await runner.ready()
        worker = document["workers"][0] if document else {}
        return code == 200 and worker["pid"] not in (None, before["pid"])

    await wait_until(restarted, timeout=30)
    after = (await runner.ready())[1]["workers"][0]
    counts = await settled(redis, engine, stream, effects, keys, timeout=60)
    in_flight = await runner.metric("safesync_queue_in_flight_messages", stream=stream)
    restarts = await runner.metric("safesync_worker_restarts_total")
    runner.signal(signal.SIGTERM)
    assert await runner.wait() == 0, runner.stderr
    assert (counts.lost, counts.duplicated, counts.left_pending) == (0, 0, 0), counts
    assert after["consumer"] == before["consumer"] and after["restarts"] == 1
    assert restarts == 1 and in_flight == 0
    events = [r for r in runner.log_records() if r.get("event") == "worker_restarting"]
    assert len(events) == 1 and events[0]["exit_code"] == -signal.SIGKILL, events


@pytest.mark.faults
async def test_sigterm_under_load_drains_every_process(
    engine: AsyncEngine,
    redis: Redis,
    stream: str,
    effects: str,
    inbox: Inbox,
    runners: Callable[..., Runner],
) -> None:
    """SIGTERM to a busy runner: it exits 0 within the drain timeout (plus start-up
    margins), no committed message is left pending in any process, unstarted entries are
    handed back (no delivery counted, claimable at once), and a successor applies the rest
    exactly once."""
    keys = await publish(redis, stream, 2_000)
    drain_timeout = 5.0
    env = app_env(stream, effects, inbox, hang_ms=20)
    runner = runners(APP, "--workers", "2", "--drain-timeout", str(drain_timeout), env=env)
    await runner.wait_ready()

    async def busy() -> bool:
        return await effect_rows(engine, effects) >= 40

    await wait_until(busy, timeout=30)
    loop = asyncio.get_running_loop()
    stopped_at = loop.time()
    runner.signal(signal.SIGTERM)
    code = await runner.wait(timeout=drain_timeout + 20)
    stop_seconds = loop.time() - stopped_at
    at_stop = await count_delivery(
        redis, engine, stream=stream, group="g", effects=effects, sent=keys
    )
    pending: list[dict[str, Any]] = await redis.xpending_range(stream, "g", "-", "+", 2_000)
    assert code == 0, runner.stderr
    assert stop_seconds < drain_timeout + 3
    assert at_stop.applied < len(keys)  # it really stopped under load
    assert at_stop.applied_but_pending == 0  # every committed message was acked
    assert all(entry["times_delivered"] == 0 for entry in pending)  # handed back
    assert all(entry["time_since_delivered"] > 10**9 for entry in pending)  # claimable now
    successor = runners(APP, "--workers", "2", env=app_env(stream, effects, inbox))
    counts = await settled(redis, engine, stream, effects, keys, timeout=60)
    successor.signal(signal.SIGTERM)
    assert await successor.wait() == 0, successor.stderr
    assert (counts.lost, counts.duplicated, counts.left_pending) == (0, 0, 0), counts


@pytest.mark.faults
async def test_second_signal_kills_the_processes(
    engine: AsyncEngine,
    redis: Redis,
    stream: str,
    effects: str,
    inbox: Inbox,
    runners: Callable[..., Runner],
) -> None:
    """While handlers run long, the endpoint's in-flight gauge is one sample, the sum
    over both processes; a second SIGINT during the drain kills the processes at once (exit 130,
    long before the drain timeout) and a successor still applies everything exactly once."""
    keys = await publish(redis, stream, 40)
    env = app_env(stream, effects, inbox, hang_ms=4_000)
    runner = runners(APP, "--workers", "2", "--drain-timeout", "30", env=env)
    await runner.wait_ready()
    documents: list[dict[str, Any]] = []

    async def all_held() -> bool:
        document = (await runner.ready())[1]
        documents.append(document)
        held = [worker["in_flight"] for worker in document["workers"]]
        return held == [16, 16]  # each holds its read-ahead limit (8 running, 8 waiting)

    await wait_until(all_held, timeout=30)

    async def gauge_summed() -> bool:
        return await runner.metric("safesync_queue_in_flight_messages", stream=stream) == 32

    await wait_until(gauge_summed, timeout=3)
    pids = [worker["pid"] for worker in documents[-1]["workers"]]
    loop = asyncio.get_running_loop()
    stopped_at = loop.time()
    runner.signal(signal.SIGINT)
    await asyncio.sleep(0.3)
    runner.signal(signal.SIGINT)
    code = await runner.wait(timeout=10)
    assert code == 130, runner.stderr
    assert loop.time() - stopped_at < 3

    async def all_gone() -> bool:
        return all(gone(pid) for pid in pids)

    await wait_until(all_gone, timeout=5)
    successor = runners(APP, env=app_env(stream, effects, inbox))
    counts = await settled(redis, engine, stream, effects, keys, timeout=60)
    successor.signal(signal.SIGTERM)
    assert await successor.wait() == 0, successor.stderr
    assert (counts.lost, counts.duplicated, counts.left_pending) == (0, 0, 0), counts


@pytest.mark.faults
async def test_processes_stop_by_themselves_when_the_runner_dies(
    engine: AsyncEngine,
    redis: Redis,
    stream: str,
    effects: str,
    inbox: Inbox,
    runners: Callable[..., Runner],
) -> None:
    """If the runner is SIGKILLed, its worker processes notice, drain and exit on their
    own (no orphan keeps consuming): nothing committed is left pending, and a successor
    applies the rest exactly once."""
    keys = await publish(redis, stream, 1_000)
    runner = runners(APP, "--workers", "2", env=app_env(stream, effects, inbox, hang_ms=10))
    pids = [worker["pid"] for worker in (await runner.wait_ready())["workers"]]

    async def busy() -> bool:
        return await effect_rows(engine, effects) >= 40

    await wait_until(busy, timeout=30)
    runner.signal(signal.SIGKILL)
    assert await runner.wait() == -signal.SIGKILL

    async def all_gone() -> bool:
        return all(gone(pid) for pid in pids)

    await wait_until(all_gone, timeout=15)
    at_stop = await count_delivery(
        redis, engine, stream=stream, group="g", effects=effects, sent=keys
    )
    successor = runners(APP, "--workers", "2", env=app_env(stream, effects, inbox))
    counts = await settled(redis, engine, stream, effects, keys, timeout=60)
    successor.signal(signal.SIGTERM)
    assert await successor.wait() == 0, successor.stderr
    assert at_stop.applied < len(keys) and at_stop.applied_but_pending == 0, at_stop
    assert (counts.lost, counts.duplicated, counts.left_pending) == (0, 0, 0), counts
