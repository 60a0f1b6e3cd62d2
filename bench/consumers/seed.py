"""The synchronous seed library (coti-safesync-framework 0.0.1): one QueueConsumer per
process, as its documentation shows, over a pymysql engine."""

from __future__ import annotations

import contextlib
import threading
from typing import Any

import redis
import sqlalchemy as sa
from coti_safesync_framework.config import QueueConfig
from coti_safesync_framework.queue.consumer import QueueConsumer

from ..drain import group_drained_sync
from ..protocol import WorkerSpec
from ..settings import DRAIN_POLL_SECONDS, SEED_BLOCK_MS
from ..workload import handler_sql


class SeedConsumer:
    """``QueueConsumer.run(handler=..., engine=...)`` until a watcher thread sees the
    group drained and calls ``stop()``.

    ``run()`` reads one entry per XREADGROUP whatever ``max_read_count`` says (it calls
    ``next()``, which asks for one), so the default ``max_read_count=1`` is kept. The
    engine is SQLAlchemy's default for ``mysql+pymysql`` (pool of 5).
    """

    def __init__(self, spec: WorkerSpec) -> None:
        self.spec = spec
        self.resources = contextlib.ExitStack()
        self.handled = 0

    def prepare(self) -> None:
        spec = self.spec
        url = sa.make_url(spec.database_url).set(drivername="mysql+pymysql")
        self.engine = sa.create_engine(url)
        self.resources.callback(self.engine.dispose)
        client = redis.Redis.from_url(spec.redis_url)
        self.resources.callback(client.close)
        self.watcher_redis = redis.Redis.from_url(spec.redis_url)
        self.resources.callback(self.watcher_redis.close)
        with self.engine.connect() as conn:
            conn.execute(sa.text("SELECT 1"))
        client.ping()
        self.watcher_redis.ping()
        self.consumer = QueueConsumer(
            client,
            QueueConfig(
                stream_key=spec.stream,
                consumer_group=spec.group,
                consumer_name=spec.consumer,
                block_ms=SEED_BLOCK_MS,
            ),
        )
        self.sql = handler_sql(spec.table)

    def consume(self) -> dict[str, int]:
        done = threading.Event()
        watcher = threading.Thread(target=self._stop_when_drained, args=(done,), daemon=True)
        watcher.start()
        try:
            self.consumer.run(handler=self._deposit, engine=self.engine)
        finally:
            done.set()
            watcher.join()
        return {"handled": self.handled}

    def close(self) -> None:
        self.resources.close()

    def _deposit(self, message: Any, session: Any) -> None:
        session.execute(self.sql, message.payload)
        self.handled += 1

    def _stop_when_drained(self, done: threading.Event) -> None:
        while not done.wait(DRAIN_POLL_SECONDS):
            if group_drained_sync(self.watcher_redis, self.spec.stream, self.spec.group):
                self.consumer.stop()
                return
