"""Fencing: a partition's owner registers its epoch in the database before it consumes,
and every transaction of its handlers checks, just before its COMMIT, that the epoch is
still the partition's newest.

The check reads the partition's row with a shared lock (``FOR SHARE`` / ``LOCK IN SHARE
MODE``) that the transaction keeps until it ends; a registration updates the row, so it
waits for the transactions that passed the check and then makes every later check of an
older epoch fail. Hence a previous owner's transactions either committed before the new
owner's registration (and so before any of the new owner's transactions started) or are
refused with :class:`PartitionFencedError` and rolled back: effects never interleave
between two owners of a partition, however long one of them was paused.
"""

from __future__ import annotations

from collections.abc import Callable

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine

from ...db import tables
from ...db.idempotent import insert_idempotent
from ...db.identifiers import quoted_column, quoted_table, validate_identifier
from ...db.session import DbSession
from ...errors import ConfigurationError, PartitionFencedError

__all__ = ["EpochFence", "PartitionFence"]


def _row_key(stream: str, group: str) -> dict[str, bytes]:
    """The primary key of a partition's row, as stored."""
    return {"stream": tables.key_bytes(stream), "consumer_group": tables.key_bytes(group)}


class EpochFence:
    """The epochs table: one row per partition stream and consumer group with the epoch
    of the partition's current owner. Create it once with :meth:`create_table` (or put
    :meth:`create_sql` in your migrations); pass it as
    ``PartitionedConsumer(..., fence=EpochFence())``."""

    def __init__(self, table: str = "safesync_partition_epochs") -> None:
        validate_identifier(table, "epochs table")
        self.table = sa.Table(
            table,
            sa.MetaData(),
            tables.binary_key_column("stream"),
            tables.binary_key_column("consumer_group"),
            sa.Column("epoch", sa.BigInteger(), nullable=False),
        )
        self._check_sql: dict[sa.Dialect, str] = {}

    def create_sql(self, engine: AsyncEngine) -> str:
        """The CREATE TABLE statement for the engine's database, for migrations."""
        return tables.create_sql(self.table, engine)

    async def create_table(self, engine: AsyncEngine) -> None:
        """Create the table if it does not exist."""
        await tables.create_table(self.table, engine)

    async def check_table(self, engine: AsyncEngine) -> None:
        """Raise :class:`ConfigurationError` unless the table exists."""
        name = self.table.name

        def exists(connection: sa.Connection) -> bool:
            return bool(sa.inspect(connection).has_table(name))

        async with DbSession(engine, operation="fence_check", registry=None) as session:
            if not await session.connection.run_sync(exists):
                raise ConfigurationError(
                    f"the epochs table {name!r} does not exist: create it with "
                    "EpochFence().create_table(engine) or the DDL from "
                    "EpochFence().create_sql(engine)"
                )

    async def register(self, engine: AsyncEngine, stream: str, group: str, epoch: int) -> int:
        """Record ``epoch`` as the partition's newest, waiting for transactions that passed
        an older epoch's check; returns the epoch recorded now: ``epoch``, or a larger or
        equal one that was there already (then ``epoch`` is stale and was not recorded)."""
        t = self.table
        key = _row_key(stream, group)
        where = (t.c.stream == key["stream"]) & (t.c.consumer_group == key["consumer_group"])
        async with DbSession(engine, operation="fence_register", registry=None) as session:
            await insert_idempotent(session, sa.insert(t).values(**key, epoch=0))
            current = int(
                await session.execute_scalar(sa.select(t.c.epoch).where(where).with_for_update())
            )
            if current >= epoch:
                return current
            await session.execute(sa.update(t).where(where).values(epoch=epoch))
        return epoch

    async def current(self, engine: AsyncEngine, stream: str, group: str) -> int | None:
        """The recorded epoch of a partition (None: never registered)."""
        t, key = self.table, _row_key(stream, group)
        where = (t.c.stream == key["stream"]) & (t.c.consumer_group == key["consumer_group"])
        async with DbSession(engine, operation="fence_read", registry=None) as session:
            found = await session.execute_scalar(sa.select(t.c.epoch).where(where))
        return None if found is None else int(found)

    def bind(
        self, stream: str, group: str, epoch: int, *, on_refused: Callable[[], None] | None = None
    ) -> PartitionFence:
        """The check of one acquisition, for the partition's consumer; ``on_refused`` is
        called when a transaction is refused (the owner should stop)."""
        return PartitionFence(self, stream, group, epoch, on_refused)

    def check_sql(self, session: DbSession) -> str:
        """The locking read of a partition's epoch, as SQL text (built once per dialect)."""
        dialect = session.sa_dialect
        sql = self._check_sql.get(dialect)
        if sql is None:
            lock = "LOCK IN SHARE MODE" if dialect.name in ("mysql", "mariadb") else "FOR SHARE"
            sql = self._check_sql[dialect] = (
                f"SELECT {quoted_column('epoch', dialect)} "
                f"FROM {quoted_table(self.table.name, dialect)} "
                f"WHERE {quoted_column('stream', dialect)} = :stream "
                f"AND {quoted_column('consumer_group', dialect)} = :consumer_group {lock}"
            )
        return sql


class PartitionFence:
    """Checks, in a handler's transaction, that ``epoch`` still owns the partition."""

    def __init__(
        self,
        fence: EpochFence,
        stream: str,
        group: str,
        epoch: int,
        on_refused: Callable[[], None] | None,
    ) -> None:
        self.stream = stream
        self.epoch = epoch
        self._fence = fence
        self._params = _row_key(stream, group)
        self._on_refused = on_refused

    async def check(self, session: DbSession) -> None:
        """Raise :class:`PartitionFencedError` (the transaction is then rolled back)
        unless the partition's recorded epoch is still this one; the shared lock taken
        holds off a newer registration until the transaction ends."""
        found = await session.execute_scalar(self._fence.check_sql(session), self._params)
        if found is None or int(found) != self.epoch:
            if self._on_refused is not None:
                self._on_refused()
            raise PartitionFencedError(
                f"partition {self.stream!r} has a newer owner (epoch {found}, this consumer's "
                f"is {self.epoch}): the transaction is refused and rolled back"
            )
