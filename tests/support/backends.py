"""What the database tests need to know about each backend they run on: SQL that differs,
and how to look at a pool's connections from the server's side."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine
from sqlalchemy.pool import NullPool

from safesync_async import lock_name
from safesync_async.db.dialects.postgresql import advisory_key64
from safesync_async.db.lock_names import LockKey

from .settings import DATABASE_URL, POSTGRES_URL


@dataclass(frozen=True)
class PoolReport:
    checked_out: int
    idle_connections: int
    open_transactions: int
    lock_waits: int
    held_locks: tuple[LockKey, ...]
    lock_wait_timeouts: tuple[str, ...]


@dataclass(frozen=True)
class Backend:
    """One database the suite runs on; ``q`` quotes an identifier for it."""

    name: str
    url: str
    quote_char: str
    autoinc_pk: str
    connection_id_sql: str
    default_lock_timeout: str
    codes: dict[str, int | str] = field(default_factory=dict)

    @property
    def is_mysql(self) -> bool:
        return self.name == "mariadb"

    def code(self, error: Exception) -> int | str | None:
        """The server's code for a library error: errno (MySQL) or SQLSTATE (PostgreSQL)."""
        return getattr(error, "errno", None) if self.is_mysql else getattr(error, "sqlstate", None)

    def q(self, identifier: str) -> str:
        return f"{self.quote_char}{identifier}{self.quote_char}"

    def kill_sql(self, session_id: int) -> str:
        if self.is_mysql:
            return f"KILL {int(session_id)}"
        return f"SELECT pg_terminate_backend({int(session_id)})"

    def cancel_statement_sql(self, session_id: int) -> str:
        if self.is_mysql:
            return f"KILL QUERY {int(session_id)}"
        return f"SELECT pg_cancel_backend({int(session_id)})"

    @property
    def commit_packet(self) -> bytes:
        """Bytes identifying the client's COMMIT on the wire (MySQL COM_QUERY, PG query)."""
        return b"\x03COMMIT" if self.is_mysql else b"COMMIT"

    def sleep_sql(self, seconds: float) -> str:
        return f"SELECT SLEEP({seconds})" if self.is_mysql else f"SELECT pg_sleep({seconds})"

    def lock_timeout_query(self) -> str:
        if self.is_mysql:
            return "SELECT @@SESSION.innodb_lock_wait_timeout"
        return "SELECT current_setting('lock_timeout')"

    def probe(self, url: str | None = None) -> AsyncEngine:
        """A pool-less engine for looking at a server (this backend's shared one unless
        ``url`` names another, e.g. a private instance) from outside the tested pool."""
        return create_async_engine(url or self.url, poolclass=NullPool)

    async def other_connection_gets(self, key: LockKey) -> bool:
        """Whether a brand-new connection can take the named lock for ``key`` right now
        (released again at once if it could)."""
        probe = self.probe()
        try:
            async with probe.connect() as conn:
                if self.is_mysql:
                    got = await _scalar(conn, "SELECT GET_LOCK(%s, 0)", (lock_name(key),))
                    if got == 1:
                        await _scalar(conn, "SELECT RELEASE_LOCK(%s)", (lock_name(key),))
                    return bool(got == 1)
                key64 = advisory_key64(key)
                got = await _scalar(conn, "SELECT pg_try_advisory_lock($1)", (key64,))
                if got:
                    await _scalar(conn, "SELECT pg_advisory_unlock($1)", (key64,))
                return bool(got)
        finally:
            await probe.dispose()

    async def pool_report(self, engine: AsyncEngine, keys: tuple[LockKey, ...] = ()) -> PoolReport:
        """Borrow every idle connection of ``engine`` and report what the server sees."""
        checked_out = engine.pool.checkedout()  # type: ignore[attr-defined]
        idle = engine.pool.checkedin()  # type: ignore[attr-defined]
        borrowed: list[AsyncConnection] = []
        ids: list[int] = []
        timeouts: list[str] = []
        try:
            for _ in range(idle):
                conn = await engine.connect()
                borrowed.append(conn)
                ids.append(int(await _scalar(conn, self.connection_id_sql)))
                timeouts.append(str(await _scalar(conn, self.lock_timeout_query())))
                await conn.rollback()
        finally:
            for conn in borrowed:
                await conn.close()
        if self.is_mysql:
            # InnoDB refreshes its INFORMATION_SCHEMA transaction cache at most every 100 ms.
            await asyncio.sleep(0.15)
        probe = self.probe(engine.url.render_as_string(hide_password=False))
        try:
            async with probe.connect() as conn:
                open_trx, waits = await self._transactions(conn, ids)
                held = tuple([key for key in keys if await self._is_held(conn, key)])
        finally:
            await probe.dispose()
        return PoolReport(checked_out, idle, open_trx, waits, held, tuple(timeouts))

    async def _transactions(self, conn: AsyncConnection, ids: list[int]) -> tuple[int, int]:
        id_list = ",".join(str(i) for i in ids) or "NULL"
        if self.is_mysql:
            open_trx = await _scalar(
                conn,
                "SELECT COUNT(*) FROM information_schema.INNODB_TRX "
                f"WHERE trx_mysql_thread_id IN ({id_list})",
            )
            waits = await _scalar(
                conn,
                "SELECT COUNT(*) FROM information_schema.INNODB_TRX WHERE trx_state = 'LOCK WAIT'",
            )
        else:
            open_trx = await _scalar(
                conn,
                "SELECT COUNT(*) FROM pg_stat_activity WHERE state LIKE 'idle in transaction%%' "
                f"AND pid IN ({id_list})",
            )
            waits = await _scalar(conn, "SELECT COUNT(*) FROM pg_locks WHERE NOT granted")
        return int(open_trx or 0), int(waits or 0)

    async def _is_held(self, conn: AsyncConnection, key: LockKey) -> bool:
        if self.is_mysql:
            return await _scalar(conn, "SELECT IS_USED_LOCK(%s)", (lock_name(key),)) is not None
        key64 = advisory_key64(key) & 0xFFFFFFFFFFFFFFFF
        held = await _scalar(
            conn,
            "SELECT COUNT(*) FROM pg_locks WHERE locktype = 'advisory' "
            f"AND classid = {key64 >> 32} AND objid = {key64 & 0xFFFFFFFF} AND objsubid = 1",
        )
        return bool(held)


async def _scalar(conn: AsyncConnection, sql: str, params: tuple[Any, ...] = ()) -> Any:
    return (await conn.exec_driver_sql(sql, params)).scalar()


MARIADB = Backend(
    name="mariadb",
    url=DATABASE_URL,
    quote_char="`",
    autoinc_pk="BIGINT AUTO_INCREMENT PRIMARY KEY",
    connection_id_sql="SELECT CONNECTION_ID()",
    default_lock_timeout="50",
    codes={"lock_wait_timeout": 1205, "no_such_table": 1146, "too_long": 1406},
)
POSTGRES = Backend(
    name="postgresql",
    url=POSTGRES_URL,
    quote_char='"',
    autoinc_pk="BIGSERIAL PRIMARY KEY",
    connection_id_sql="SELECT pg_backend_pid()",
    default_lock_timeout="0",
    codes={"lock_wait_timeout": "55P03", "no_such_table": "42P01", "too_long": "22001"},
)
BACKENDS = {backend.name: backend for backend in (MARIADB, POSTGRES)}
