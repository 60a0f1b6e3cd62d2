"""The runner as a subprocess (``python -m safesync_async.cli worker ...``), an effects
table that records which worker process applied each message, and an inbox. MariaDB
only: the runner does not depend on the database backend."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import IO, Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families
from redis.asyncio import Redis
from sqlalchemy.ext.asyncio import AsyncEngine

from safesync_async import DbSession, Inbox, QueueProducer

from ..conftest import TableFactory
from ..queue.helpers import wait_until
from ..support.backends import MARIADB, Backend
from ..support.servers import free_port
from ..support.settings import DATABASE_URL, REDIS_URL

REPO_ROOT = Path(__file__).resolve().parents[2]
EFFECTS = (
    "CREATE TABLE `{table}` (seq BIGINT AUTO_INCREMENT PRIMARY KEY, "
    "message_id VARCHAR(40) NOT NULL, message_key VARCHAR(200) NOT NULL, n INT, "
    "worker INT NOT NULL, KEY (message_key))"
)


@pytest.fixture
def backend() -> Backend:
    """Runner tests use MariaDB (see the module docstring)."""
    return MARIADB


@pytest.fixture
async def effects(make_table: TableFactory) -> str:
    """An effects table: one row per applied message, with the worker index."""
    return await make_table(EFFECTS)


class Runner:
    """``safesync worker ARGS`` as a child process (stderr kept), with its HTTP endpoint
    on a free port."""

    def __init__(self, *args: str, env: Mapping[str, str], http: bool = True) -> None:
        self._stderr: IO[bytes] = tempfile.TemporaryFile()  # noqa: SIM115 (closed in close())
        self.port = free_port()
        http_args = ["--http-port", str(self.port)] if http else []
        environment = {
            **{k: v for k, v in os.environ.items() if not k.startswith("TEST_WORKER_")},
            "SAFESYNC_DATABASE_URL": DATABASE_URL,
            "SAFESYNC_REDIS_URL": REDIS_URL,
            **env,
        }
        self.process = subprocess.Popen(
            [sys.executable, "-m", "safesync_async.cli", "worker", *args, *http_args],
            cwd=REPO_ROOT,
            env=environment,
            stdout=subprocess.DEVNULL,
            stderr=self._stderr,
        )

    @property
    def running(self) -> bool:
        return self.process.poll() is None

    def signal(self, sig: signal.Signals) -> None:
        if self.running:
            self.process.send_signal(sig)

    async def wait(self, timeout: float = 60) -> int:
        """The exit code; fails the test if it is still running after ``timeout``."""
        try:
            await wait_until(self._exited, timeout=timeout, interval=0.02)
        except TimeoutError:
            self.close()
            raise AssertionError(
                f"runner still running after {timeout} s:\n{self.stderr}"
            ) from None
        return self.process.returncode

    async def _exited(self) -> bool:
        return not self.running

    async def get(self, path: str) -> httpx.Response:
        async with httpx.AsyncClient(timeout=5) as client:
            return await client.get(f"http://127.0.0.1:{self.port}{path}")

    async def ready(self) -> tuple[int, dict[str, Any]]:
        """The readiness answer: (status code, document); (0, {}) while not listening."""
        try:
            response = await self.get("/health/ready")
        except httpx.TransportError:
            return 0, {}
        return response.status_code, response.json()

    async def wait_ready(self, timeout: float = 30) -> dict[str, Any]:
        """Wait until every worker process is ready; the readiness document."""
        document: dict[str, Any] = {}

        async def ready() -> bool:
            nonlocal document
            if not self.running:
                raise AssertionError(f"runner exited {self.process.returncode}:\n{self.stderr}")
            code, document = await self.ready()
            return code == 200

        try:
            await wait_until(ready, timeout=timeout, interval=0.05)
        except TimeoutError:
            raise AssertionError(
                f"not ready after {timeout} s: {document}\n{self.stderr}"
            ) from None
        return document

    async def samples(self, name: str, **labels: str) -> list[float]:
        """The values of the samples of ``name`` whose labels include ``labels``."""
        text = (await self.get("/metrics")).text
        return [
            sample.value
            for family in text_string_to_metric_families(text)
            for sample in family.samples
            if sample.name == name and labels.items() <= sample.labels.items()
        ]

    async def metric(self, name: str, **labels: str) -> float:
        """The value of the one sample of ``name`` with ``labels`` (0 if there is none);
        more than one (say, one per process) fails the test."""
        values = await self.samples(name, **labels)
        assert len(values) <= 1, f"{len(values)} samples of {name} {labels}: {values}"
        return values[0] if values else 0.0

    @property
    def stderr(self) -> str:
        self._stderr.seek(0)
        return self._stderr.read().decode(errors="replace")[-8_000:]

    def log_records(self) -> list[dict[str, Any]]:
        """The JSON log records written so far (with ``--log-format json``)."""
        self._stderr.seek(0)
        records = []
        for line in self._stderr.read().decode(errors="replace").splitlines():
            if line.startswith("{"):
                records.append(json.loads(line))
        return records

    def close(self) -> None:
        if self.running:
            self.process.kill()
            self.process.wait(10)
        self._stderr.close()


@pytest.fixture
def runners() -> Iterator[Callable[..., Runner]]:
    """Start runners (``runners(*args, env=..., http=True)``); any still running at the
    end is killed (its worker processes then stop by themselves)."""
    started: list[Runner] = []

    def start(*args: str, env: Mapping[str, str] | None = None, http: bool = True) -> Runner:
        runner = Runner(*args, env=env or {}, http=http)
        started.append(runner)
        return runner

    yield start
    for runner in started:
        runner.close()


async def effect_rows(engine: AsyncEngine, effects: str) -> int:
    """Rows in an effects table (duplicates included)."""
    async with DbSession(engine, registry=None) as session:
        return int(await session.execute_scalar(f"SELECT COUNT(*) FROM `{effects}`"))


async def rows_per_worker(engine: AsyncEngine, effects: str) -> dict[int, int]:
    async with DbSession(engine, registry=None) as session:
        rows = await session.fetch_all(
            f"SELECT worker, COUNT(*) AS n FROM `{effects}` GROUP BY worker"
        )
    return {int(row["worker"]): int(row["n"]) for row in rows}


async def publish(redis: Redis, stream: str, size: int) -> list[str]:
    """Publish ``{"n": 0..size-1}``; their inbox keys (``id:<entry id>``)."""
    ids = await QueueProducer(redis, stream, registry=None).publish_batch(
        {"n": n} for n in range(size)
    )
    return [f"id:{entry_id}" for entry_id in ids]


def app_env(stream: str, effects: str, inbox: Inbox | None, *, hang_ms: int = 0) -> dict[str, str]:
    """The environment of ``tests.worker.apps:effects``."""
    env = {"SAFESYNC_STREAM": stream, "TEST_WORKER_EFFECTS": effects}
    if inbox is not None:
        env["TEST_WORKER_INBOX"] = inbox.table.name
    if hang_ms:
        env["TEST_WORKER_HANG_MS"] = str(hang_ms)
    return env
