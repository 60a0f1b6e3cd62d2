"""Every example under examples/ runs to completion against the real servers (their own
assertions check the outcome they print) and leaves no table behind; the demo removes
what it created."""

from __future__ import annotations

import asyncio
import importlib
import os
import pkgutil
import subprocess
import sys
from collections.abc import Awaitable, Callable
from typing import cast

import pytest

import examples
from safesync_async import DbSession, create_engine, create_redis_client

from .support.backends import MARIADB
from .support.cluster import PrivateRedisCluster
from .support.settings import DATABASE_URL, REDIS_URL

EXAMPLES = sorted(
    info.name
    for info in pkgutil.iter_modules(examples.__path__)
    if info.name not in {"settings", "demo"} and not info.name.startswith("_")
)

CLUSTER_EXAMPLES = {"queue_cluster"}


def test_examples_are_discovered() -> None:
    """The async twins of the seed README's five database and five queue examples exist."""
    assert {
        "db_atomic_update",
        "db_row_lock",
        "db_occ",
        "db_advisory_lock",
        "db_idempotent_insert",
        "queue_iter_messages",
        "queue_run",
        "queue_recovery_worker",
        "queue_manual_next",
        "queue_graceful_shutdown",
    } <= set(EXAMPLES)


async def _tables(pattern: str) -> set[str]:
    """Tables of the examples' database whose names match a LIKE pattern."""
    engine = create_engine(DATABASE_URL)
    try:
        async with DbSession(engine) as session:
            rows = await session.fetch_all(
                "SELECT table_name AS name FROM information_schema.tables "
                "WHERE table_schema = DATABASE() AND table_name LIKE :pattern",
                {"pattern": pattern},
            )
    finally:
        await engine.dispose()
    return {str(row["name"]) for row in rows}


@pytest.mark.parametrize("name", EXAMPLES)
async def test_example_runs(
    name: str, request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The example's main() completes, its own checks pass, and it drops every table it
    created (the Redis Cluster example runs on the session's private cluster)."""
    if name in CLUSTER_EXAMPLES:
        cluster: PrivateRedisCluster = request.getfixturevalue("redis_cluster")
        monkeypatch.setenv("SAFESYNC_REDIS_CLUSTER_URL", cluster.url)
    module = importlib.import_module(f"examples.{name}")
    main = cast(Callable[[], Awaitable[None]], module.main)
    before = await _tables("example\\_%")
    await main()
    assert sorted(await _tables("example\\_%") - before) == []


@pytest.mark.parametrize("servers", ["embedded", "configured"])
def test_demo_command(servers: str) -> None:
    """The README's demo command runs end to end and exits 0 with every invariant checked:
    with no URL (embedded PostgreSQL and Valkey) and with MariaDB and Redis given."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SAFESYNC_")}
    if servers == "configured":
        env.update(SAFESYNC_DATABASE_URL=MARIADB.url, SAFESYNC_REDIS_URL=REDIS_URL)
    result = subprocess.run(
        [sys.executable, "-m", "examples.demo", "--messages", "2000", "--concurrency", "16"],
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
        env=env,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "all invariants hold" in result.stdout
    assert ("embedded" in result.stdout) == (servers == "embedded")
    if servers == "configured":
        assert asyncio.run(_demo_leftovers()) == []


async def _demo_leftovers() -> list[str]:
    """The demo's tables and streams still on the configured servers."""
    redis = create_redis_client(REDIS_URL)
    try:
        keys = {str(key) async for key in redis.scan_iter(match="demo:*")}
    finally:
        await redis.aclose()
    return sorted(await _tables("demo\\_%") | keys)
