"""DDL for the library's own tables (the inbox, the outbox): as text for migrations, or
created directly."""

from __future__ import annotations

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine

__all__ = ["create_sql", "create_table"]


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
