"""The inbox and outbox tables as DDL, for migrations: ``Inbox().create_sql(engine)`` and
``Outbox().create_sql(engine)`` render the statements for the engine's database without
connecting to it. The files under examples/sql/ hold what they render for MySQL/MariaDB
and for PostgreSQL; main() checks that they still match.

    python -m examples.queue_inbox_outbox_ddl    # prints the DDL for SAFESYNC_DATABASE_URL
"""

from __future__ import annotations

import asyncio
from pathlib import Path

from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from safesync_async import Inbox, Outbox

from .settings import DATABASE_URL

SQL_FILES = Path(__file__).resolve().parent / "sql"
DIALECT_URLS = {"mysql": "mysql+asyncmy://", "postgresql": "postgresql+asyncpg://"}


# --8<-- [start:ddl]
def migration_sql(engine: AsyncEngine) -> str:
    """CREATE TABLE and CREATE INDEX statements for the default inbox and outbox tables
    (pass a table name to Inbox() / Outbox() for others). Nothing is executed."""
    return Inbox().create_sql(engine) + "\n" + Outbox().create_sql(engine)


# --8<-- [end:ddl]


def normalized(sql: str) -> str:
    """SQLAlchemy indents with tabs and leaves spaces at line ends; the files do not."""
    return "\n".join(line.rstrip().expandtabs(4) for line in sql.strip().splitlines())


def stale_files() -> list[str]:
    """The files under examples/sql/ that differ from what the library renders now."""
    stale = []
    for dialect, url in DIALECT_URLS.items():
        engine = create_async_engine(url)  # only its SQL dialect is used
        for table, ddl in (
            ("inbox", Inbox().create_sql(engine)),
            ("outbox", Outbox().create_sql(engine)),
        ):
            path = SQL_FILES / f"{table}.{dialect}.sql"
            if not path.exists() or normalized(path.read_text()) != normalized(ddl):
                stale.append(path.name)
    return stale


async def main() -> None:
    assert stale_files() == []
    engine = create_async_engine(DATABASE_URL)
    try:
        print(normalized(migration_sql(engine)))
    finally:
        await engine.dispose()


if __name__ == "__main__":
    asyncio.run(main())
