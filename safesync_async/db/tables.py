"""The library's own tables (the inbox, the outbox, the partition epochs): their DDL, as
text for migrations or created directly, and their binary key columns."""

from __future__ import annotations

import hashlib

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql
from sqlalchemy.ext.asyncio import AsyncEngine

__all__ = ["KEY_BYTES", "binary_key_column", "create_sql", "create_table", "key_bytes"]

#: Longest key column value; longer keys are stored as ``sha256:`` and the 32-byte digest.
KEY_BYTES = 255


def binary_key_column(name: str) -> sa.Column[bytes]:
    """A primary-key column compared byte for byte: ``VARBINARY(255)`` on MySQL/MariaDB,
    ``bytea`` on PostgreSQL (text columns compare by collation and merge distinct keys)."""
    binary = sa.VARBINARY(KEY_BYTES).with_variant(postgresql.BYTEA(), "postgresql")
    return sa.Column(name, binary, primary_key=True)


def key_bytes(value: str | bytes) -> bytes:
    """``value`` as stored in a key column: its bytes (str as UTF-8, lone surrogates
    kept), or their digest when longer than :data:`KEY_BYTES`."""
    raw = value if isinstance(value, bytes) else value.encode("utf-8", "surrogatepass")
    return raw if len(raw) <= KEY_BYTES else b"sha256:" + hashlib.sha256(raw).digest()


def create_sql(table: sa.Table, engine: AsyncEngine) -> str:
    """The CREATE TABLE and CREATE INDEX statements for ``table`` on the engine's database,
    for a migration tool."""
    dialect = engine.dialect
    parts = [str(sa.schema.CreateTable(table).compile(dialect=dialect)).strip()]
    parts += [
        str(sa.schema.CreateIndex(index).compile(dialect=dialect)).strip()
        for index in sorted(table.indexes, key=lambda index: index.name or "")
    ]
    return ";\n".join(parts) + ";"


async def create_table(table: sa.Table, engine: AsyncEngine) -> None:
    """Create ``table`` and its indexes if the table does not exist."""
    async with engine.begin() as conn:
        await conn.run_sync(table.metadata.create_all, tables=[table], checkfirst=True)
