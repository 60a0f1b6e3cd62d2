"""Scaffolding of the fault-injection suite: the ``reliability`` recorder (and the report
written at the end of the session), private servers, worker processes, an effects table
and an in-process consumer runner.

The suite is MySQL/MariaDB-specific (KILL CONNECTION, innodb_snapshot_isolation, private
``mariadbd`` instances), so ``backend`` is pinned to MariaDB here.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import tempfile
from collections.abc import AsyncIterator, Awaitable, Callable, Generator, Iterator, Mapping
from pathlib import Path
from typing import IO, Any

import pytest
from redis.asyncio import Redis
from sqlalchemy.ext.asyncio import AsyncEngine

from safesync_async import (
    DbSession,
    QueueConfig,
    QueueConsumer,
    QueueError,
    QueueMessage,
    QueueProducer,
)

from ..conftest import TableFactory
from ..queue.helpers import wait_until
from ..support.backends import MARIADB, Backend
from ..support.checker import (
    EFFECTS,
    EFFECTS_POSTGRES,
    DeliveryCounts,
    count_delivery,
    effect_key,
)
from ..support.reliability import ENV_VAR, Recorder, ReliabilityReport, server_versions
from ..support.servers import PrivateMariaDB, PrivatePostgres, PrivateRedis

REPO_ROOT = Path(__file__).resolve().parents[2]
_REPORT = pytest.StashKey[ReliabilityReport]()

Handler = Callable[[QueueMessage[Any], DbSession], Awaitable[None]]


# -- the report ------------------------------------------------------------------------


def _report(config: pytest.Config) -> ReliabilityReport:
    if _REPORT not in config.stash:
        config.stash[_REPORT] = ReliabilityReport()
    return config.stash[_REPORT]


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    report = yield
    if report.when == "call" or (report.when == "setup" and not report.passed):
        reason = str(getattr(report, "wasxfail", ""))
        outcome = "xfailed" if reason and report.skipped else report.outcome
        _report(item.config).note_outcome(item.nodeid, outcome, report.duration, reason)
    return report


def pytest_sessionfinish(session: pytest.Session) -> None:
    target = os.environ.get(ENV_VAR)
    report = session.config.stash.get(_REPORT, None)
    if not target or report is None or not report.rows:
        return
    path = Path(target)
    if not path.is_absolute():
        path = session.config.rootpath / path
    path.write_text(report.render(), encoding="utf-8")


@pytest.fixture
async def reliability(
    request: pytest.FixtureRequest, backend: Backend, safesync_redis_url: str
) -> Recorder:
    """``reliability.record(family, scenario, **figures)``: a row of the report."""
    report = _report(request.config)
    if report.versions is None:
        report.versions = await server_versions(backend.url, safesync_redis_url)
    return report.recorder(request.node.nodeid)


# -- servers and names -----------------------------------------------------------------


@pytest.fixture
def backend() -> Backend:
    """Fault scenarios run on MariaDB only (see the module docstring)."""
    return MARIADB


@pytest.fixture
async def effects(make_table: TableFactory) -> str:
    """An effects table (see tests.support.checker.EFFECTS) on the shared database."""
    return await make_table(EFFECTS)


class PrivateServers:
    """Starts private Redis / MariaDB / PostgreSQL instances and closes them all at the
    end."""

    def __init__(self) -> None:
        self._started: list[PrivateRedis | PrivateMariaDB | PrivatePostgres] = []

    def redis(self, *, appendonly: bool = True) -> PrivateRedis:
        server = PrivateRedis(appendonly=appendonly)
        self._started.append(server)
        server.start()
        return server

    def mariadb(self, *extra: str) -> PrivateMariaDB:
        server = PrivateMariaDB()
        self._started.append(server)
        server.start(*extra)
        return server

    def postgres(self, *extra: str) -> PrivatePostgres:
        server = PrivatePostgres()
        self._started.append(server)
        server.start(*extra)
        return server

    def close(self) -> None:
        for server in reversed(self._started):
            server.close()


@pytest.fixture
def private_servers() -> Iterator[PrivateServers]:
    """Private server instances on free ports: the only ones a test may kill or pause."""
    servers = PrivateServers()
    try:
        yield servers
    finally:
        servers.close()


async def create_effects(engine: AsyncEngine, name: str) -> str:
    """An effects table on another server (a private instance, dropped with it)."""
    ddl = EFFECTS if engine.dialect.name in ("mysql", "mariadb") else EFFECTS_POSTGRES
    async with DbSession(engine, registry=None) as session:
        await session.execute(ddl.format(table=name))
    return name


# -- consumers -------------------------------------------------------------------------


def effect_handler(
    table: str,
    before: Callable[[QueueMessage[Any], DbSession], Awaitable[None]] | None = None,
    *,
    deferred: bool = False,
) -> Handler:
    """A handler writing one effect row per message (``before`` runs first, e.g. a fault);
    ``deferred``: the row is deferred, so it travels to MariaDB with the COMMIT."""

    async def handler(message: QueueMessage[Any], session: DbSession) -> None:
        if before is not None:
            await before(message, session)
        sql = f"INSERT INTO {table} (message_id, message_key, n) VALUES (:id, :key, :n)"
        params = {"id": message.id, "key": effect_key(message), "n": message.payload["n"]}
        if deferred:
            session.defer(sql, params)
        else:
            await session.execute(sql, params)

    return handler


@contextlib.asynccontextmanager
async def running(
    consumer: QueueConsumer, handler: Any, *, engine: AsyncEngine | None = None
) -> AsyncIterator[asyncio.Task[None]]:
    """Run ``consumer`` in a task for the block; then stop it gracefully and re-raise
    whatever ``run()`` raised (a crashed loop fails the test)."""
    task = asyncio.create_task(consumer.run(handler, engine=engine))
    try:
        yield task
    finally:
        consumer.stop()
        async with asyncio.timeout(60):
            await task


async def until(condition: Callable[[], Awaitable[bool] | bool], *, timeout: float) -> float:
    """Poll ``condition`` (sync or async) until it holds; return the seconds it took.
    TimeoutError after ``timeout`` seconds."""

    async def holds() -> bool:
        result = condition()
        return result if isinstance(result, bool) else await result

    loop = asyncio.get_running_loop()
    started = loop.time()
    await wait_until(holds, timeout=timeout, interval=0.02)
    return loop.time() - started


def queue_config(stream: str, **overrides: Any) -> QueueConfig:
    """Group ``g``, consumer ``c``, short blocks and claims: the scenarios' defaults."""
    settings: dict[str, Any] = {
        "stream_key": stream,
        "consumer_group": "g",
        "consumer_name": "c",
        "block_ms": 100,
        "concurrency": 8,
        "claim_min_idle_ms": 500,
        "claim_interval_ms": 100,
        "reconnect_max_delay": 0.5,
    }
    settings.update(overrides)
    return QueueConfig(**settings)


async def effect_rows(engine: AsyncEngine, effects: str) -> int:
    """Rows in an effects table (duplicates included)."""
    async with DbSession(engine, registry=None) as session:
        return int(await session.execute_scalar(f"SELECT COUNT(*) FROM {effects}"))


async def wait_settled(
    redis: Redis,
    engine: AsyncEngine,
    stream: str,
    effects: str,
    keys: list[str],
    *,
    timeout: float = 60,
) -> DeliveryCounts:
    """The counts once every message is accounted for (applied, dead-lettered or reported)
    and nothing is pending, or the last counts after ``timeout`` (for the asserts)."""
    latest: list[DeliveryCounts] = []

    async def settled() -> bool:
        counts = await count_delivery(
            redis, engine, stream=stream, group="g", effects=effects, sent=keys
        )
        latest.append(counts)
        return counts.lost == 0 and counts.left_pending == 0

    with contextlib.suppress(TimeoutError):
        await until(settled, timeout=timeout)
    return latest[-1]


async def publish_plain(redis: Redis, stream: str, size: int) -> list[str]:
    """Publish ``{"n": 0..size-1}`` (pipelined, no idempotency key); their inbox keys."""
    ids = await QueueProducer(redis, stream, registry=None).publish_batch(
        {"n": n} for n in range(size)
    )
    return [f"id:{entry_id}" for entry_id in ids]


async def publish_keyed(
    producer: QueueProducer, numbers: range, prefix: str
) -> tuple[list[str], list[str]]:
    """Publish ``{"n": n}`` with idempotency key ``<prefix><n>`` (pipelined); return the
    inbox keys published and those whose outcome is unknown (the call failed midway)."""
    keys = [f"key:{prefix}{n}" for n in numbers]
    fields = [producer.fields_for({"n": n}, idempotency_key=f"{prefix}{n}") for n in numbers]
    try:
        await producer.add_fields(fields)
    except QueueError:
        return [], keys
    return keys, []


# -- worker processes ------------------------------------------------------------------


class Worker:
    """``python -m tests.support.worker ...`` as a child process (stderr kept)."""

    def __init__(
        self, *args: str, failpoints: str = "", env: Mapping[str, str] | None = None
    ) -> None:
        self._stderr: IO[bytes] = tempfile.TemporaryFile()  # noqa: SIM115 (closed in close())
        environment = {**os.environ, "SAFESYNC_FAILPOINTS": failpoints, **(env or {})}
        self.process = subprocess.Popen(
            [sys.executable, "-m", "tests.support.worker", *args],
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

    async def wait(self, timeout: float = 90) -> int:
        """The exit code (negative: killed by that signal); kill it after ``timeout``."""
        try:
            await until(lambda: not self.running, timeout=timeout)
        except TimeoutError:
            self.process.kill()
            self.process.wait(10)
            raise AssertionError(
                f"worker still running after {timeout} s:\n{self.stderr}"
            ) from None
        return self.process.returncode

    @property
    def stderr(self) -> str:
        self._stderr.seek(0)
        return self._stderr.read().decode(errors="replace")[-4_000:]

    def close(self) -> None:
        if self.running:
            self.process.kill()
            self.process.wait(10)
        self._stderr.close()


@pytest.fixture
def workers() -> Iterator[Callable[..., Worker]]:
    """Start worker processes (``workers(*args, failpoints=..., env=...)``); any still
    running at the end is killed."""
    started: list[Worker] = []

    def start(*args: str, failpoints: str = "", env: Mapping[str, str] | None = None) -> Worker:
        worker = Worker(*args, failpoints=failpoints, env=env)
        started.append(worker)
        return worker

    yield start
    for worker in started:
        worker.close()
