"""Every example under examples/ runs to completion against the real servers (their own
assertions check the outcome they print)."""

from __future__ import annotations

import importlib
import os
import pkgutil
import subprocess
import sys
from collections.abc import Awaitable, Callable
from typing import cast

import pytest

import examples

from .support.backends import MARIADB
from .support.settings import REDIS_URL

EXAMPLES = sorted(
    info.name
    for info in pkgutil.iter_modules(examples.__path__)
    if info.name not in {"settings", "demo"} and not info.name.startswith("_")
)


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


@pytest.mark.parametrize("name", EXAMPLES)
async def test_example_runs(name: str) -> None:
    """The example's main() completes and its own checks pass."""
    module = importlib.import_module(f"examples.{name}")
    main = cast(Callable[[], Awaitable[None]], module.main)
    await main()


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
