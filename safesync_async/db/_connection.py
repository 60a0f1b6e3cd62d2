"""Pooled-connection hygiene: check a connection out, end its transaction, undo session
settings, discard it when its state is in doubt (ending a statement left running on the
server from a connection *outside* the pool), and give it back.

Shared by :class:`~safesync_async.db.session.DbSession` and
:class:`~safesync_async.db.lease.ConnectionLease`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import weakref
from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, Protocol

from sqlalchemy import exc as sa_exc
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine
from sqlalchemy.pool import Pool, PoolProxiedConnection
from sqlalchemy.util import greenlet_spawn

from ._drivers import DriverExecutor, driver_state
from .dialects import Dialect, ErrorKind

if TYPE_CHECKING:
    from .lease import ConnectionLease

__all__ = [
    "Connector",
    "KillOutcome",
    "PooledConnection",
    "Savepoint",
    "SessionConnection",
    "give_back",
    "kill_server_session",
]

_log = logging.getLogger("safesync_async.db.session")

# Bound on killing, from another connection, a statement left running by an interruption.
KILL_TIMEOUT = 2.0


class Savepoint(Protocol):
    """A nested transaction in progress."""

    async def commit(self) -> None: ...

    async def rollback(self) -> None: ...


class SessionConnection(Protocol):
    """What a session needs of its connection (a seam: unit tests pass a fake)."""

    executor: DriverExecutor | None
    session_id: int | None
    direct_used: bool

    @property
    def sqlalchemy_connection(self) -> AsyncConnection | None: ...

    def sqlalchemy(self) -> AsyncConnection: ...

    @property
    def valid(self) -> bool: ...

    async def end_transaction(self, *, commit: bool) -> None: ...

    async def begin_savepoint(self) -> Savepoint: ...

    async def run_plain(self, statements: Sequence[str]) -> None: ...

    async def invalidate(self) -> None: ...

    async def release(self, lease: ConnectionLease | None) -> None: ...

    async def kill_server_session(self, dialect: Dialect, bound: float) -> str: ...


#: Checks a connection out for a session: the engine's pool or the lease.
Connector = Callable[[AsyncEngine, "ConnectionLease | None"], Awaitable[SessionConnection]]


class PooledConnection:
    """One DBAPI connection of the engine's pool, as a session uses it: the driver fast
    path and, made on first use, a SQLAlchemy connection over the same DBAPI connection."""

    __slots__ = ("_sa_conn", "direct_used", "engine", "executor", "fairy", "session_id")

    def __init__(self, engine: AsyncEngine, fairy: PoolProxiedConnection) -> None:
        self.engine = engine
        self.fairy = fairy
        state = driver_state(fairy)
        self.executor: DriverExecutor | None = state.executor
        self.session_id = state.session_id
        #: Whether statements ran on the driver path (so the driver holds the transaction).
        self.direct_used = False
        self._sa_conn: AsyncConnection | None = None

    @classmethod
    async def checkout(cls, engine: AsyncEngine, lease: ConnectionLease | None) -> PooledConnection:
        """A connection from the lease, or from the engine's pool (the pool's own events
        and liveness check run; no SQLAlchemy Connection is built unless a construct is
        executed)."""
        if lease is not None:
            return await lease.session_connection()
        return cls(engine, await greenlet_spawn(engine.sync_engine.raw_connection))

    def begin_session(self) -> None:
        """Forget the previous session's use of the connection (a lease keeps it)."""
        self.direct_used = False
        self._sa_conn = None

    @property
    def sqlalchemy_connection(self) -> AsyncConnection | None:
        """The SQLAlchemy connection, if one was made."""
        return self._sa_conn

    def sqlalchemy(self) -> AsyncConnection:
        """A SQLAlchemy connection over this DBAPI connection, made on first use."""
        if self._sa_conn is None:
            self._sa_conn = AsyncConnection(
                self.engine, Connection(self.engine.sync_engine, connection=self.fairy)
            )
        return self._sa_conn

    @property
    def valid(self) -> bool:
        if self._sa_conn is not None and self._sa_conn.invalidated:
            return False
        return self.fairy.is_valid

    async def end_transaction(self, *, commit: bool) -> None:
        """COMMIT or ROLLBACK through whichever layer holds the transaction."""
        sa_conn = self._sa_conn
        if sa_conn is not None and sa_conn.in_transaction():
            await (sa_conn.commit() if commit else sa_conn.rollback())
        elif self.executor is not None and self.direct_used:
            await (self.executor.commit() if commit else self.executor.rollback())

    async def begin_savepoint(self) -> Savepoint:
        """SAVEPOINT, through SQLAlchemy (which names and tracks it)."""
        return await self.sqlalchemy().begin_nested()

    async def run_plain(self, statements: Sequence[str]) -> None:
        """Run statements without parameters (settings, lock release), then end the
        transaction they may have opened."""
        executor = self.executor
        for sql in statements:
            if executor is not None:
                self.direct_used = True
                await executor.execute(sql, ())
            else:
                await self.sqlalchemy().exec_driver_sql(sql)
        if executor is None or executor.in_transaction() is not False:
            await self.end_transaction(commit=False)

    async def invalidate(self) -> None:
        """Close the DBAPI connection; the pool will not hand it out again. The socket is
        closed at once: a graceful close would wait for a server that may be hung."""
        if not self.valid:
            return
        with contextlib.suppress(Exception):
            if self.executor is not None:
                self.executor.terminate()
            async with asyncio.timeout(KILL_TIMEOUT):
                if self._sa_conn is not None:
                    await self._sa_conn.invalidate()
                else:
                    await greenlet_spawn(self.fairy.invalidate)

    async def release(self, lease: ConnectionLease | None) -> None:
        """Back to the lease (which keeps it if healthy) or to the pool."""
        if lease is not None:
            await lease.release(self.fairy, self._sa_conn)
        else:
            await give_back(self.fairy, self._sa_conn)

    async def kill_server_session(self, dialect: Dialect, bound: float) -> str:
        """End this connection's server session from outside (see kill_server_session)."""
        if self.session_id is None:
            return KillOutcome.FAILED
        return await kill_server_session(self.engine, dialect, self.session_id, bound)


async def give_back(fairy: PoolProxiedConnection, sa_conn: AsyncConnection | None) -> None:
    """Return a connection to its pool (which discards it if it was invalidated)."""
    if sa_conn is not None:
        await sa_conn.close()
    else:
        await greenlet_spawn(fairy.close)


class KillOutcome:
    """What ending a server session from another connection came to."""

    DONE = "done"  # killed, or already gone
    FAILED = "failed"  # the server answered with an error (logged)
    UNREACHABLE = "unreachable"  # no connection to the server could be made in time


# A pool beside each engine's own, with the same connect arguments, for KILL statements:
# killing a stuck session must never wait for a connection of the pool it exhausts.
_side_pools: weakref.WeakKeyDictionary[Engine, Pool] = weakref.WeakKeyDictionary()


def _side_pool(engine: AsyncEngine) -> Pool:
    sync_engine = engine.sync_engine
    pool = _side_pools.get(sync_engine)
    if pool is None:
        pool = _side_pools[sync_engine] = sync_engine.pool.recreate()
    return pool


async def kill_server_session(
    engine: AsyncEngine, dialect: Dialect, session_id: int, bound: float
) -> str:
    """End server session ``session_id`` from a fresh connection outside the engine's
    pool, within ``bound`` seconds; returns a :class:`KillOutcome` value. The side
    connection is closed afterwards, so nothing lingers beside the pool."""
    kill_sql = dialect.kill_session_sql(session_id)
    side: PoolProxiedConnection | None = None
    try:
        async with asyncio.timeout(bound):
            side = await greenlet_spawn(_side_pool(engine).connect)
            await greenlet_spawn(_execute_on, side, kill_sql)
        return KillOutcome.DONE
    except TimeoutError:
        _log.warning("the server did not answer %r within %.1f s", kill_sql, bound)
        return KillOutcome.UNREACHABLE
    except Exception as exc:
        info = (
            dialect.classify_exception(exc)
            if isinstance(exc, sa_exc.SQLAlchemyError)
            else dialect.classify_driver_exception(exc)
        )
        if dialect.is_unknown_session(info):
            return KillOutcome.DONE
        if side is None or info.kind in (ErrorKind.DISCONNECT, ErrorKind.UNAVAILABLE):
            _log.warning("could not connect to end a stuck server session: %s", exc)
            return KillOutcome.UNREACHABLE
        _log.warning("could not end a stuck server session (%r): %s", kill_sql, exc)
        return KillOutcome.FAILED
    finally:
        if side is not None:
            with contextlib.suppress(Exception):
                await greenlet_spawn(side.invalidate)


def _execute_on(connection: PoolProxiedConnection, sql: str) -> None:
    cursor = connection.cursor()
    try:
        cursor.execute(sql)
    finally:
        cursor.close()
