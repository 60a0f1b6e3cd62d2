"""The inbox: a table that makes redelivered messages a detected no-op.

Redis Streams deliver at least once: a consumer that commits and dies before its XACK gets
the message again. With an inbox, the consumer inserts (stream, group, message key) in the
handler's own transaction before running the handler. The first delivery inserts the row
and commits it together with the handler's effects; any later delivery finds the row,
skips the handler and is acked as a duplicate. The message key is the producer's
idempotency key when the entry carries one (so the same logical message published twice,
e.g. by an outbox relay retrying, is applied once), else the stream entry id.
"""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime, timedelta
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine

from ..db.idempotent import insert_idempotent
from ..db.identifiers import validate_identifier
from ..db.session import DbSession
from ..errors import ConfigurationError
from .models import QueueMessage

__all__ = ["Inbox"]

_KEY_CHARS = 190  # utf8mb4 primary key columns must fit InnoDB's 3072-byte index limit


def _now() -> datetime:
    return datetime.now(UTC).replace(tzinfo=None)


class Inbox:
    """Exactly-once *effects* for a consumer: ``QueueConsumer(..., inbox=Inbox())``.

    Create the table once with :meth:`create_table`, or put :meth:`create_sql` in your
    migrations. Rows are only needed while a message can still be redelivered; delete
    older ones with :meth:`purge` (for example daily, keeping a week).
    """

    def __init__(self, table: str = "safesync_inbox") -> None:
        validate_identifier(table, "inbox table")
        self.table = sa.Table(
            table,
            sa.MetaData(),
            sa.Column("stream", sa.String(_KEY_CHARS), primary_key=True),
            sa.Column("consumer_group", sa.String(_KEY_CHARS), primary_key=True),
            sa.Column("message_key", sa.String(_KEY_CHARS), primary_key=True),
            sa.Column("message_id", sa.String(64), nullable=False),
            sa.Column("processed_at", sa.DateTime(), nullable=False, index=True),
        )
        self._insert_sql: dict[str, str] = {}

    def create_sql(self, engine: AsyncEngine) -> str:
        """The CREATE TABLE statement for the engine's database, for migrations."""
        ddl = str(sa.schema.CreateTable(self.table).compile(dialect=engine.dialect)).strip()
        indexes = [
            str(sa.schema.CreateIndex(index).compile(dialect=engine.dialect)).strip()
            for index in self.table.indexes
        ]
        return ";\n".join([ddl, *indexes]) + ";"

    async def create_table(self, engine: AsyncEngine) -> None:
        """Create the table (and its index) if it does not exist."""
        async with engine.begin() as conn:
            await conn.run_sync(self.table.metadata.create_all, checkfirst=True)

    @staticmethod
    def message_key(message: QueueMessage[Any]) -> str:
        """The deduplication key: the idempotency key, else the entry id."""
        key = message.idempotency_key
        key = f"key:{key}" if key is not None else f"id:{message.id}"
        if len(key) > _KEY_CHARS:
            key = "sha256:" + hashlib.sha256(key.encode("utf-8", "surrogatepass")).hexdigest()
        return key

    async def record(self, session: DbSession, group: str, message: QueueMessage[Any]) -> bool:
        """Insert the message's row in the session's transaction; False if it is already
        there (the message was processed before: skip it)."""
        values = {
            "stream": message.stream,
            "consumer_group": group,
            "message_key": self.message_key(message),
            "message_id": message.id,
            "processed_at": _now(),
        }
        skipping = session.dialect.insert_skipping_duplicates(self.table, values)
        if skipping is not None:
            return (await session._execute(skipping)).rowcount == 1
        return await insert_idempotent(session, self._insert_text(session.sa_dialect), values)

    def _insert_text(self, dialect: sa.Dialect) -> str:
        """The row's INSERT as SQL text with ``:name`` parameters (built once per dialect),
        so that it runs on the driver directly, like the handler's own SQL text."""
        sql = self._insert_sql.get(dialect.name)
        if sql is None:
            quote = dialect.identifier_preparer.quote
            names = [column.name for column in self.table.columns]
            sql = self._insert_sql[dialect.name] = (
                f"INSERT INTO {dialect.identifier_preparer.format_table(self.table)} "
                f"({', '.join(quote(name) for name in names)}) "
                f"VALUES ({', '.join(':' + name for name in names)})"
            )
        return sql

    async def seen(self, engine: AsyncEngine, stream: str, group: str, message_key: str) -> bool:
        """Whether a message key has been processed (for diagnostics and tests)."""
        t = self.table.c
        async with DbSession(engine, operation="inbox") as session:
            found = await session.execute_scalar(
                sa.select(sa.func.count()).where(
                    t.stream == stream, t.consumer_group == group, t.message_key == message_key
                )
            )
        return bool(found)

    async def purge(
        self, engine: AsyncEngine, older_than: timedelta, *, batch_size: int = 5_000
    ) -> int:
        """Delete rows processed more than ``older_than`` ago, in short transactions;
        returns how many were deleted. Keep rows longer than any message can be redelivered
        (the claim idle time plus how long a consumer may be down)."""
        if older_than <= timedelta(0) or batch_size < 1:
            raise ConfigurationError("older_than must be positive and batch_size >= 1")
        cutoff = _now() - older_than
        t = self.table.c
        key = sa.tuple_(t.stream, t.consumer_group, t.message_key)
        deleted = 0
        while True:
            async with DbSession(engine, operation="inbox_purge") as session:
                rows = await session.fetch_all(
                    sa.select(t.stream, t.consumer_group, t.message_key)
                    .where(t.processed_at < cutoff)
                    .limit(batch_size)
                )
                if not rows:
                    return deleted
                keys = [(r["stream"], r["consumer_group"], r["message_key"]) for r in rows]
                deleted += await session.execute(sa.delete(self.table).where(key.in_(keys)))
