"""The runner's health answers during a Redis outage (a private server, killed and
restarted), ``--reload`` on a code change, and a worker that keeps dying at start."""

from __future__ import annotations

import os
import signal
import textwrap
from collections.abc import Callable
from pathlib import Path

import pytest
from redis.asyncio import Redis
from sqlalchemy.ext.asyncio import AsyncEngine

from safesync_async import Inbox

from ..queue.helpers import wait_until
from ..support.servers import PrivateRedis
from .conftest import Runner, app_env, effect_rows, publish
from .test_runner import APP, settled


@pytest.mark.faults
async def test_readiness_follows_a_redis_outage(
    stream: str, effects: str, runners: Callable[..., Runner]
) -> None:
    """Readiness is 200 while Redis serves, 503 naming Redis while the (private) server is
    down, 200 again once it is back; liveness stays 200 and no process is restarted."""
    server = PrivateRedis()
    server.start()
    try:
        env = {**app_env(stream, effects, None), "SAFESYNC_REDIS_URL": server.url}
        runner = runners(APP, env=env)
        await runner.wait_ready()
        server.kill()
        documents = []

        async def not_ready() -> bool:
            code, document = await runner.ready()
            documents.append(document)
            return code == 503

        await wait_until(not_ready, timeout=15)
        reasons = documents[-1]["workers"][0]["reasons"]
        live = await runner.get("/health/live")
        server.start()
        document = await runner.wait_ready(timeout=30)
        runner.signal(signal.SIGTERM)
        assert await runner.wait() == 0, runner.stderr
    finally:
        server.close()
    assert any("Redis outage" in reason for reason in reasons), reasons
    assert live.status_code == 200 and live.json()["live"] is True
    assert document["workers"][0]["restarts"] == 0


APP_MODULE = """
from tests.worker.apps import effects as app  # version {version}
"""


async def test_reload_restarts_processes_without_losing_work(
    engine: AsyncEngine,
    redis: Redis,
    stream: str,
    effects: str,
    inbox: Inbox,
    runners: Callable[..., Runner],
    tmp_path: Path,
) -> None:
    """With --reload, changing a watched file restarts the worker process gracefully (a
    new pid, the restart logged); the messages handled across the restart are applied
    exactly once and nothing is left pending."""
    module = tmp_path / "reload_app.py"
    module.write_text(textwrap.dedent(APP_MODULE.format(version=1)))
    keys = await publish(redis, stream, 400)
    runner = runners(
        "reload_app:app", "--app-dir", str(tmp_path), "--reload", "--reload-dir", str(tmp_path),
        "--log-format", "json", env=app_env(stream, effects, inbox, hang_ms=10),
    )  # fmt: skip
    first = (await runner.wait_ready())["workers"][0]["pid"]

    async def busy() -> bool:
        return await effect_rows(engine, effects) >= 40

    await wait_until(busy, timeout=30)
    module.write_text(textwrap.dedent(APP_MODULE.format(version=2)))
    stat = module.stat()
    os.utime(module, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))  # coarse clocks

    async def reloaded() -> bool:
        code, document = await runner.ready()
        return code == 200 and document["workers"][0]["pid"] not in (None, first)

    await wait_until(reloaded, timeout=30)
    counts = await settled(redis, engine, stream, effects, keys, timeout=60)
    runner.signal(signal.SIGTERM)
    assert await runner.wait() == 0, runner.stderr
    assert (counts.lost, counts.duplicated, counts.left_pending) == (0, 0, 0), counts
    events = [record.get("event") for record in runner.log_records()]
    assert events.count("reloading") == 1 and events.count("worker_restarting") == 0, events


@pytest.mark.faults
async def test_a_worker_that_keeps_dying_at_start_stops_the_runner(
    stream: str, effects: str, runners: Callable[..., Runner]
) -> None:
    """A worker process that dies before its consumer ever runs is restarted with growing
    delays, each restart logged; after five failures in a row the runner gives up with
    exit code 1 and says so, instead of spinning silently."""
    env = {**app_env(stream, effects, None), "TEST_WORKER_EXIT_AT_IMPORT": "1"}
    runner = runners(APP, "--log-format", "json", env=env, http=False)
    code = await runner.wait(timeout=60)
    records = runner.log_records()
    restarts = [r for r in records if r.get("event") == "worker_restarting"]
    given_up = [r for r in records if r.get("event") == "crash_loop"]
    assert code == 1, runner.stderr
    assert [r["restart"] for r in restarts] == [1, 2, 3, 4]
    assert [r["delay_s"] for r in restarts] == [0.5, 1.0, 2.0, 4.0]
    assert len(given_up) == 1 and "failed to start 5 times in a row" in given_up[0]["message"]
