"""What the numbers were measured on: machine, servers, versions, settings."""

from __future__ import annotations

import importlib.metadata
import os
import platform
import subprocess
from pathlib import Path
from typing import Any

import redis.asyncio
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine

import safesync_async

from .settings import REPO_ROOT

DISTRIBUTIONS = (
    "safesync-async",
    "sqlalchemy",
    "asyncmy",
    "asyncpg",
    "redis",
    "hiredis",
    "prometheus-client",
    "coti-safesync-framework",
    "pymysql",
)
SERVER_VARIABLES = (
    "version",
    "innodb_flush_log_at_trx_commit",
    "sync_binlog",
    "log_bin",
    "innodb_buffer_pool_size",
    "innodb_flush_method",
    "innodb_lock_wait_timeout",
    "max_connections",
    "tx_isolation",
    "transaction_isolation",
)


def _first_value(path: str, key: str) -> str | None:
    try:
        lines = Path(path).read_text().splitlines()
    except OSError:
        return None
    for line in lines:
        name, _, value = line.partition(":")
        if name.strip() == key:
            return value.strip()
    return None


def machine() -> dict[str, Any]:
    mem_kb = _first_value("/proc/meminfo", "MemTotal")
    return {
        "cpu_model": _first_value("/proc/cpuinfo", "model name"),
        "logical_cpus": os.cpu_count(),
        "memory_gb": round(int(mem_kb.split()[0]) / 1024**2, 1) if mem_kb else None,
        "kernel": platform.release(),
        "load_average": Path("/proc/loadavg").read_text().split()[:3],
    }


def versions() -> dict[str, str | None]:
    found: dict[str, str | None] = {
        "python": platform.python_version(),
        "safesync_async (imported)": safesync_async.__version__,
    }
    for name in DISTRIBUTIONS:
        try:
            found[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            found[name] = None
    return found


def git_revision() -> str | None:
    try:
        head = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=REPO_ROOT,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=REPO_ROOT,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None
    return head + ("+modified" if dirty else "")


async def database_settings(engine: AsyncEngine) -> dict[str, str]:
    names = ", ".join(f"'{name}'" for name in SERVER_VARIABLES)
    async with engine.connect() as conn:
        rows = await conn.execute(sa.text(f"SHOW VARIABLES WHERE Variable_name IN ({names})"))
        return {str(name): str(value) for name, value in rows}


async def redis_settings(client: redis.asyncio.Redis) -> dict[str, Any]:
    info = await client.info("server")
    persistence = await client.info("persistence")
    return {
        "version": info.get("redis_version"),
        "aof_enabled": persistence.get("aof_enabled"),
    }


async def describe(engine: AsyncEngine, client: redis.asyncio.Redis) -> dict[str, Any]:
    return {
        "machine": machine(),
        "versions": versions(),
        "git_revision": git_revision(),
        "database": await database_settings(engine),
        "redis": await redis_settings(client),
    }
