"""The transactional outbox: publish messages atomically with database writes.

``await outbox.add(session, "orders", payload)`` inserts a row in the caller's
transaction: if the transaction rolls back, the message never existed; if it commits, the
message will be published. An :class:`OutboxRelay` moves committed rows to their streams in
id order and marks them sent. Each entry carries ``idempotency_key = outbox:<table>:<id>``,
so if a relay dies between XADD and marking the row sent, the row is published again and a
consumer with an :class:`~safesync_async.queue.inbox.Inbox` applies it once.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import anyio
import anyio.abc
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine

from .. import tracing
from .._failpoints import failpoint
from .._validation import check_int, check_seconds
from ..db import tables
from ..db.identifiers import validate_identifier
from ..db.session import DbSession
from ..errors import ConfigurationError, DatabaseError, QueueError
from ..metrics import DEFAULT_REGISTRY, RegistryArg, metrics_for
from ._backoff import Backoff
from ._publishing import ReplicationWait, add_entries
from .client import RedisClient
from .codec import Codec, JsonCodec
from .models import IDEMPOTENCY_KEY_FIELD

__all__ = ["Outbox", "OutboxRelay", "OutboxStatus"]

_log = logging.getLogger("safesync_async.queue.outbox")


def _now() -> datetime:
    return datetime.now(UTC).replace(tzinfo=None)


def _pack(fields: Mapping[bytes, bytes]) -> bytes:
    """Entry fields as bytes, losslessly (latin-1 maps every byte to one code point)."""
    return json.dumps(
        {k.decode("latin-1"): v.decode("latin-1") for k, v in fields.items()}
    ).encode()


def _unpack(blob: bytes) -> dict[bytes, bytes]:
    return {k.encode("latin-1"): v.encode("latin-1") for k, v in json.loads(blob).items()}


@dataclass(frozen=True, slots=True)
class OutboxStatus:
    pending: int
    oldest_pending_age_s: float | None
    sent: int


class Outbox:
    """The outbox table and how to add messages to it.

    Create the table once with :meth:`create_table` or put :meth:`create_sql` in your
    migrations.
    """

    def __init__(self, table: str = "safesync_outbox", *, codec: Codec[Any] | None = None) -> None:
        validate_identifier(table, "outbox table")
        self.name = table
        self.codec: Codec[Any] = codec if codec is not None else JsonCodec()
        self.table = sa.Table(
            table,
            sa.MetaData(),
            sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), primary_key=True),
            sa.Column("stream", sa.String(190), nullable=False),
            sa.Column("fields", sa.LargeBinary(2**32 - 1), nullable=False),
            sa.Column("created_at", sa.DateTime(), nullable=False),
            sa.Column("sent_at", sa.DateTime(), nullable=True),
            sa.Column("entry_id", sa.String(64), nullable=True),
            sa.Index(f"ix_{table}_unsent", "sent_at", "id"),
        )

    def create_sql(self, engine: AsyncEngine) -> str:
        """The CREATE TABLE (and index) statements for the engine's database."""
        return tables.create_sql(self.table, engine)

    async def create_table(self, engine: AsyncEngine) -> None:
        """Create the table (and its index) if it does not exist."""
        await tables.create_table(self.table, engine)

    def idempotency_key(self, outbox_id: int) -> str:
        return f"outbox:{self.name}:{outbox_id}"

    async def add(
        self,
        session: DbSession,
        stream: str,
        payload: Any,
        *,
        headers: Mapping[str, str] | None = None,
    ) -> int:
        """Add a message for ``stream`` in the session's transaction; returns its outbox id.

        Nothing is published unless and until the transaction commits.
        """
        if not isinstance(stream, str) or not stream:
            raise ConfigurationError("stream must be a non-empty string")
        fields = self.codec.encode(payload)
        for name, value in (headers or {}).items():
            fields[name.encode()] = value.encode()
        tracing.inject_context(fields)  # the consumer's span links to this transaction's
        result = await session.core.run(
            sa.insert(self.table).values(
                stream=stream, fields=_pack(fields), created_at=_now(), sent_at=None
            )
        )
        assert result.inserted_key, "the outbox insert reported no primary key"
        return int(result.inserted_key[0])

    async def status(self, engine: AsyncEngine) -> OutboxStatus:
        t = self.table.c
        async with DbSession(engine, operation="outbox_status") as session:
            unsent = t.sent_at.is_(None)
            row = await session.fetch_one(
                sa.select(
                    sa.func.coalesce(sa.func.sum(sa.case((unsent, 1), else_=0)), 0).label(
                        "pending"
                    ),
                    sa.func.min(sa.case((unsent, t.created_at))).label("oldest"),
                    sa.func.count(t.sent_at).label("sent"),
                )
            )
        assert row is not None
        oldest = row["oldest"]
        age = (_now() - oldest).total_seconds() if oldest is not None else None
        return OutboxStatus(int(row["pending"]), age, int(row["sent"]))

    async def purge_sent(
        self, engine: AsyncEngine, older_than: timedelta, *, batch_size: int = 5_000
    ) -> int:
        """Delete rows sent more than ``older_than`` ago; returns how many."""
        if older_than <= timedelta(0):
            raise ConfigurationError(f"older_than must be positive, got {older_than!r}")
        check_int("batch_size", batch_size, minimum=1)
        cutoff = _now() - older_than
        t = self.table.c
        deleted = 0
        while True:
            async with DbSession(engine, operation="outbox_purge") as session:
                ids = [
                    r["id"]
                    for r in await session.fetch_all(
                        sa.select(t.id).where(t.sent_at < cutoff).limit(batch_size)
                    )
                ]
                if not ids:
                    return deleted
                deleted += await session.execute(sa.delete(self.table).where(t.id.in_(ids)))


class OutboxRelay:
    """Publishes committed outbox rows to their streams, oldest first, and marks them sent.

    Each batch runs in one READ COMMITTED transaction: ``SELECT ... ORDER BY id LIMIT n
    FOR UPDATE`` on unsent rows, pipelined XADDs, then ``UPDATE ... SET sent_at``. Several
    relays may run at once: a second relay waits on the first one's row locks, then sees
    those rows sent, so nothing is published twice in the normal path and the order is
    kept. If a relay dies, its transaction is rolled back, its locks are freed and another
    relay publishes the rows again (the consumers' inbox absorbs the repeat).

    ``wait_replicas`` (default 0: off) marks rows sent only once that many replicas of
    each stream's master acknowledged the XADDs (Redis ``WAIT``, at most
    ``wait_timeout_ms``); otherwise the batch is rolled back and published again. With
    it, a Redis failover cannot lose a relayed message. ``redis`` is a standalone or a
    Redis Cluster client; rows for streams on different masters are published to each
    master in one round trip.
    """

    def __init__(
        self,
        engine: AsyncEngine,
        redis: RedisClient,
        outbox: Outbox,
        *,
        batch_size: int = 200,
        poll_interval: float = 0.1,
        lock_timeout: float = 5.0,
        reconnect_max_delay: float = 10.0,
        wait_replicas: int = 0,
        wait_timeout_ms: int = 1_000,
        registry: RegistryArg = DEFAULT_REGISTRY,
    ) -> None:
        check_int("batch_size", batch_size, minimum=1)
        for name, seconds in (
            ("poll_interval", poll_interval),
            ("lock_timeout", lock_timeout),
            ("reconnect_max_delay", reconnect_max_delay),
        ):
            check_seconds(name, seconds)
        self._wait = ReplicationWait.of(wait_replicas, wait_timeout_ms)
        if self._wait is not None:
            self._wait.check_client(redis)
        self.engine = engine
        self.redis = redis
        self.outbox = outbox
        self.batch_size = batch_size
        self.poll_interval = poll_interval
        self.lock_timeout = lock_timeout
        self._backoff = Backoff(min(0.1, reconnect_max_delay), reconnect_max_delay)
        self._registry = registry
        self._metrics = metrics_for(registry)
        self._stop: asyncio.Event | None = None
        self._stopping = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self.published = 0

    def stop(self) -> None:
        """Finish the current batch, then return from :meth:`run`; safe from signal handlers."""
        self._stopping = True
        if self._loop is not None and self._stop is not None and not self._loop.is_closed():
            self._loop.call_soon_threadsafe(self._stop.set)

    async def run(
        self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        """Relay until :meth:`stop`; database and Redis errors are logged and retried."""
        self._loop = asyncio.get_running_loop()
        stop = self._stop = asyncio.Event()
        if self._stopping:
            stop.set()
        task_status.started()
        try:
            while not stop.is_set():
                try:
                    moved = await self.relay_once()
                except (DatabaseError, QueueError) as exc:
                    _log.warning("outbox relay batch failed, retrying: %s", exc)
                    await self._backoff.sleep(stop)
                    continue
                self._backoff.reset()
                if moved < self.batch_size:
                    await self._pause(stop)
        finally:
            self._stopping = False

    async def _pause(self, stop: asyncio.Event) -> None:
        try:
            async with asyncio.timeout(self.poll_interval):
                await stop.wait()
        except TimeoutError:
            pass

    async def relay_once(self) -> int:
        """Publish one batch; returns how many rows were published."""
        t = self.outbox.table.c
        started = time.perf_counter()
        async with DbSession(
            self.engine,
            isolation_level="READ COMMITTED",
            lock_timeout=self.lock_timeout,
            operation="outbox_relay",
            registry=self._registry,
        ) as session:
            rows = await session.fetch_all(
                sa.select(t.id, t.stream, t.fields)
                .where(t.sent_at.is_(None))
                .order_by(t.id)
                .limit(self.batch_size)
                .with_for_update()
            )
            if not rows:
                return 0
            failpoint("relay.before_publish")
            entry_ids = await self._publish(rows)
            failpoint("relay.after_publish")
            await session.execute(
                sa.update(self.outbox.table)
                .where(t.id.in_([r["id"] for r in rows]))
                .values(sent_at=_now(), entry_id=sa.case(entry_ids, value=t.id))
            )
        self.published += len(rows)
        # One series per outbox table: the rows' streams come from data, without bound.
        self._metrics.inc("outbox_relayed", self.outbox.name, amount=len(rows))
        _log.debug("relayed %d outbox rows in %.3f s", len(rows), time.perf_counter() - started)
        return len(rows)

    async def _publish(self, rows: list[dict[str, Any]]) -> dict[int, str]:
        entries = []
        for row in rows:
            fields = _unpack(row["fields"])
            fields[IDEMPOTENCY_KEY_FIELD] = self.outbox.idempotency_key(row["id"]).encode()
            entries.append((str(row["stream"]), fields))
        with tracing.messaging_span("publish", rows[0]["stream"], count=len(rows)):
            ids = await add_entries(self.redis, entries, wait=self._wait, operation="outbox XADD")
        return {row["id"]: entry_id for row, entry_id in zip(rows, ids, strict=True)}
