"""One worker process: ``python -m safesync_async.worker.child``, started by the runner.

It imports the user's module, runs one :class:`QueueConsumer` until SIGTERM/SIGINT (a
graceful stop: drain, ack, hand back), and reports its state to the runner on a pipe.
It stops by itself if the runner disappears. Exit codes: 0 stopped, 1 crashed, 2 the
app cannot run as configured.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import sys
import time
from dataclasses import dataclass
from types import FrameType
from typing import Any

import anyio.abc
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from ..db.engine import create_engine
from ..errors import ConfigurationError
from ..metrics import DEFAULT_REGISTRY, metrics_for
from ..queue.client import create_redis_client
from ..queue.config import QueueConfig
from ..queue.consumer import QueueConsumer
from ..queue.signals import install_signal_handlers
from .app import WorkerApp
from .exposition import MULTIPROC_VARIABLE
from .loading import load_app, use_app_dir
from .logs import configure_logging
from .settings import WorkerSettings, build_queue_config, engine_options
from .status import State, StatusWriter, WorkerStatus
from .urls import secrets

__all__ = ["EXIT_CONFIGURATION", "EXIT_CRASHED", "SPEC_VARIABLE", "ChildSpec", "main"]

SPEC_VARIABLE = "SAFESYNC_WORKER_SPEC"
INDEX_VARIABLE = "SAFESYNC_WORKER_INDEX"
EXIT_CRASHED = 1
EXIT_CONFIGURATION = 2
#: How often the process checks its state, and sends it at least (heartbeat).
TICK_SECONDS = 0.2
HEARTBEAT_SECONDS = 1.0
_MAX_REASON = 300
#: Longest time spent opening database connections before consuming.
WARM_UP_SECONDS = 5.0

_log = logging.getLogger("safesync_async.worker")


@dataclass(frozen=True, slots=True)
class ChildSpec:
    """What the runner tells a worker process (in its environment, not its command line,
    which other users of the machine can read)."""

    settings: WorkerSettings
    index: int
    consumer_name: str
    status_fd: int
    runner_pid: int

    def to_json(self) -> str:
        return json.dumps(
            {
                "settings": self.settings.to_json_dict(),
                "index": self.index,
                "consumer_name": self.consumer_name,
                "status_fd": self.status_fd,
                "runner_pid": self.runner_pid,
            }
        )

    @classmethod
    def from_json(cls, text: str) -> ChildSpec:
        data: dict[str, Any] = json.loads(text)
        return cls(
            settings=WorkerSettings.from_json_dict(data["settings"]),
            index=int(data["index"]),
            consumer_name=str(data["consumer_name"]),
            status_fd=int(data["status_fd"]),
            runner_pid=int(data["runner_pid"]),
        )


class _Reporter(anyio.abc.TaskStatus[None]):
    """Sends the consumer's state to the runner on change and every heartbeat; writes
    the in-flight gauge in multiprocess mode; stops the consumer if the runner is gone.
    It is the consumer's ``task_status``: told when the consumer started."""

    def __init__(self, spec: ChildSpec, consumer: QueueConsumer, writer: StatusWriter) -> None:
        self._spec = spec
        self._consumer = consumer
        self._writer = writer
        self._sample = MULTIPROC_VARIABLE in os.environ
        self._metrics = metrics_for(DEFAULT_REGISTRY)
        self._was_running = False
        self._sent: tuple[State, bool] | None = None
        self._sent_at = 0.0

    def status(self) -> WorkerStatus:
        readiness = self._consumer.readiness.state()
        self._was_running = self._was_running or readiness.running
        state: State = "starting"
        if self._consumer.stopping or (self._was_running and not readiness.running):
            state = "stopping"
        elif readiness.running:
            state = "running"
        stats = self._consumer.statistics()
        return WorkerStatus(
            pid=os.getpid(),
            state=state,
            ready=readiness.ready and state == "running",
            reasons=tuple(reason[:_MAX_REASON] for reason in readiness.reasons),
            in_flight=stats.in_flight,
            acked=stats.acked,
        )

    def started(self, value: None = None) -> None:
        """The consumer's group exists and its loops run (``task_status.started()``)."""
        _log.info(
            "worker %d started: consumer %s, pid %d",
            self._spec.index,
            self._spec.consumer_name,
            os.getpid(),
            extra={"event": "worker_started", "worker": self._spec.index,
                   "consumer": self._spec.consumer_name},
        )  # fmt: skip
        self.tick()

    def tick(self) -> None:
        status = self.status()
        now = time.monotonic()
        key = (status.state, status.ready)
        if key != self._sent or now - self._sent_at >= HEARTBEAT_SECONDS:
            self._sent, self._sent_at = key, now
            if not self._writer.send(status):
                self._runner_gone()
        if os.getppid() != self._spec.runner_pid:
            self._runner_gone()
        if self._sample:
            self._metrics.sample_tracked()

    def _runner_gone(self) -> None:
        if not self._consumer.stopping:
            _log.warning(
                "worker %d: the runner (pid %d) is gone; stopping",
                self._spec.index,
                self._spec.runner_pid,
                extra={"event": "runner_gone", "worker": self._spec.index},
            )
            self._consumer.stop()

    async def run(self) -> None:
        while True:
            self.tick()
            await asyncio.sleep(TICK_SECONDS)


async def _serve(
    spec: ChildSpec, app: WorkerApp, config: QueueConfig, early_signals: list[int]
) -> int:
    settings = spec.settings
    engine = (
        create_engine(settings.database_url, **engine_options(app, settings))
        if settings.database_url is not None
        else None
    )
    redis = create_redis_client(settings.redis_url, block_ms=config.block_ms)
    consumer = QueueConsumer(redis, config, inbox=app.inbox)
    writer = StatusWriter(spec.status_fd)
    reporter = _Reporter(spec, consumer, writer)
    remove_handlers = install_signal_handlers(consumer)
    if early_signals:  # SIGTERM before the handlers were installed
        consumer.stop()
    try:
        if engine is not None and not consumer.stopping:
            await _open_connections(engine, settings.concurrency)
        async with asyncio.TaskGroup() as tasks:
            reporting = tasks.create_task(reporter.run())
            try:
                await consumer.run(app.message_handler, engine=engine, task_status=reporter)
            finally:
                reporting.cancel()
        reporter.tick()
        stats = consumer.statistics()
        _log.info(
            "worker %d stopped: %d acked, %d failed, %d dead-lettered, %d handed back",
            spec.index, stats.acked, stats.failed, stats.dead_lettered, stats.handed_back,
            extra={"event": "worker_stopped", "worker": spec.index, "acked": stats.acked,
                   "handed_back": stats.handed_back},
        )  # fmt: skip
        return 0
    finally:
        remove_handlers()
        writer.close()
        await redis.aclose()
        if engine is not None:
            await engine.dispose()


async def _open_connections(engine: AsyncEngine, wanted: int) -> None:
    """Open the pool's connections (up to ``wanted``) before consuming, so that the first
    messages of a backlog do not each wait for a connection to be set up. A failure is
    left to the consumer, which rides out database outages."""
    size = getattr(engine.pool, "size", None)
    count = min(wanted, int(size())) if callable(size) else 0
    connections: list[AsyncConnection] = []

    async def open_one() -> None:
        connections.append(await engine.connect())

    try:
        async with asyncio.timeout(WARM_UP_SECONDS), asyncio.TaskGroup() as tasks:
            for _ in range(count):
                tasks.create_task(open_one())
    except Exception as exc:
        _log.warning("could not open the database connections in advance: %r", exc)
    finally:
        for connection in connections:
            await connection.close()


def main() -> int:
    """Entry point of a worker process."""
    stop_requested: list[int] = []

    def early_stop(signum: int, frame: FrameType | None) -> None:
        stop_requested.append(signum)  # before the consumer exists: stop it at once

    signal.signal(signal.SIGTERM, early_stop)
    signal.signal(signal.SIGINT, early_stop)
    raw = os.environ.pop(SPEC_VARIABLE, None)
    if raw is None:
        print("error: this module is started by `safesync worker`", file=sys.stderr)
        return EXIT_CONFIGURATION
    spec = ChildSpec.from_json(raw)
    settings = spec.settings
    os.environ[INDEX_VARIABLE] = str(spec.index)
    configure_logging(
        settings.log,
        role=f"worker-{spec.index}",
        secrets=secrets(settings.redis_url, settings.database_url),
    )
    use_app_dir(settings.app_dir)
    try:
        app = load_app(settings.target)
        config = build_queue_config(app, settings, spec.consumer_name)
    except ConfigurationError as exc:
        _log.error(
            "worker %d cannot start: %s", spec.index, exc,
            extra={"event": "worker_failed", "worker": spec.index},
        )  # fmt: skip
        return EXIT_CONFIGURATION
    try:
        return asyncio.run(_serve(spec, app, config, stop_requested))
    except Exception:
        _log.exception(
            "worker %d crashed", spec.index, extra={"event": "worker_crashed", "worker": spec.index}
        )
        return EXIT_CRASHED


if __name__ == "__main__":
    sys.exit(main())
