"""The inbox: a table that makes redelivered messages a detected no-op.

Redis Streams deliver at least once: a consumer that commits and dies before its XACK gets
the message again. With an inbox, the consumer inserts (stream, group, message key) in the
handler's own transaction before running the handler. The first delivery inserts the row
and commits it together with the handler's effects; any later delivery finds the row,
skips the handler and is acked as a duplicate. The message key is the producer's
idempotency key when the entry carries a non-empty one (so the same logical message
published twice, e.g. by an outbox relay retrying, is applied once), else the stream
entry id.

Keys are compared byte for byte on every backend: the key columns are binary
(``VARBINARY`` on MySQL/MariaDB, ``bytea`` on PostgreSQL), so ``Order-1`` and
``order-1``, ``k1`` and ``k1 ``, ``cafe`` and ``café``, or two keys that are not valid
UTF-8, are always distinct messages.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine

from ..db import tables
from ..db.idempotent import insert_idempotent
from ..db.identifiers import quoted_column, quoted_table, validate_identifier
from ..db.session import DbSession
from ..errors import ConfigurationError
from .models import IDEMPOTENCY_KEY_FIELD, QueueMessage

__all__ = ["Inbox"]

#: Longest key column value; longer stream names, group names and keys are stored as
#: ``sha256:`` followed by the 32-byte digest of their bytes.
KEY_BYTES = tables.KEY_BYTES
_KEY_COLUMNS = ("stream", "consumer_group", "message_key")


def _now() -> datetime:
    return datetime.now(UTC).replace(tzinfo=None)


class Inbox:
    """Exactly-once *effects* for a consumer: ``QueueConsumer(..., inbox=Inbox())``.

    Create the table once with :meth:`create_table`, or put :meth:`create_sql` in your
    migrations; :meth:`check_table` (run by the consumer when it starts) refuses a table
    whose key columns are not binary, such as one created by version 0.1 (see the
    effectively-once guide for the migration). Rows are only needed while a message can
    still be redelivered; delete older ones with :meth:`purge` (for example daily,
    keeping a week).
    """

    def __init__(self, table: str = "safesync_inbox") -> None:
        validate_identifier(table, "inbox table")
        self.table = sa.Table(
            table,
            sa.MetaData(),
            *(tables.binary_key_column(name) for name in _KEY_COLUMNS),
            sa.Column("message_id", sa.String(64), nullable=False),
            sa.Column("processed_at", sa.DateTime(), nullable=False, index=True),
        )
        self._insert_sql: dict[sa.Dialect, tuple[str, bool]] = {}

    def create_sql(self, engine: AsyncEngine) -> str:
        """The CREATE TABLE statement for the engine's database, for migrations."""
        return tables.create_sql(self.table, engine)

    async def create_table(self, engine: AsyncEngine) -> None:
        """Create the table (and its index) if it does not exist."""
        await tables.create_table(self.table, engine)

    async def check_table(self, engine: AsyncEngine) -> None:
        """Raise :class:`ConfigurationError` unless the table exists with binary key
        columns (text columns compare keys by collation and merge distinct messages)."""
        name = self.table.name

        def columns(connection: sa.Connection) -> dict[str, Any]:
            inspector = sa.inspect(connection)
            if not inspector.has_table(name):
                return {}
            return {column["name"]: column["type"] for column in inspector.get_columns(name)}

        async with DbSession(engine, operation="inbox_check", registry=None) as session:
            found = await session.connection.run_sync(columns)
        if not found:
            raise ConfigurationError(
                f"the inbox table {name!r} does not exist: create it with "
                "Inbox().create_table(engine) or the DDL from Inbox().create_sql(engine)"
            )
        textual = [column for column in _KEY_COLUMNS if not _is_binary(found.get(column))]
        if textual:
            raise ConfigurationError(
                f"the inbox table {name!r} has non-binary key columns {textual}: they compare "
                "keys by collation and would merge distinct messages ('Order-1' and "
                "'order-1'); migrate them to VARBINARY(255) / bytea (docs: effectively-once, "
                "'Migrating an inbox table')"
            )

    @staticmethod
    def message_key(message: QueueMessage[Any]) -> bytes:
        """The deduplication key, as stored: ``key:`` and the producer's idempotency key
        (its exact bytes), or ``id:`` and the entry id when there is none or it is empty;
        digested when longer than :data:`KEY_BYTES`."""
        raw = message.fields.get(IDEMPOTENCY_KEY_FIELD)
        key = b"key:" + raw if raw else b"id:" + message.id.encode("ascii")
        return tables.key_bytes(key)

    async def record(self, session: DbSession, group: str, message: QueueMessage[Any]) -> bool:
        """Insert the message's row in the session's transaction; False if it is already
        there (the message was processed before: skip it)."""
        values = {
            "stream": tables.key_bytes(message.stream),
            "consumer_group": tables.key_bytes(group),
            "message_key": self.message_key(message),
            "message_id": message.id,
            "processed_at": _now(),
        }
        sql, skips_duplicates = self._insert(session)
        if skips_duplicates:
            return (await session.core.run(sql, values)).rowcount == 1
        return await insert_idempotent(session, sql, values)

    def _insert(self, session: DbSession) -> tuple[str, bool]:
        """The row's INSERT as SQL text (built once per dialect), and whether it skips a
        duplicate by itself (PostgreSQL's ON CONFLICT DO NOTHING: no error, no savepoint)."""
        dialect = session.sa_dialect
        found = self._insert_sql.get(dialect)
        if found is None:
            names = [column.name for column in self.table.columns]
            sql = (
                f"INSERT INTO {quoted_table(self.table.name, dialect)} "
                f"({', '.join(quoted_column(name, dialect) for name in names)}) "
                f"VALUES ({', '.join(':' + name for name in names)})"
            )
            skipping = session.dialect.insert_skipping_duplicates_sql(sql)
            found = self._insert_sql[dialect] = (skipping or sql, skipping is not None)
        return found

    async def seen(
        self, engine: AsyncEngine, stream: str, group: str, message_key: bytes | str
    ) -> bool:
        """Whether a message key (as :meth:`message_key` returns it) has been processed."""
        t = self.table.c
        key = tables.key_bytes(message_key)
        async with DbSession(engine, operation="inbox") as session:
            found = await session.execute_scalar(
                sa.select(sa.func.count()).where(
                    t.stream == tables.key_bytes(stream),
                    t.consumer_group == tables.key_bytes(group),
                    t.message_key == key,
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


def _is_binary(column_type: Any) -> bool:
    try:
        return column_type is not None and column_type.python_type is bytes
    except NotImplementedError:
        return False
