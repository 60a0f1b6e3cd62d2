"""ConnectionLease: one pooled connection kept across consecutive DbSessions."""

from __future__ import annotations

from types import TracebackType

from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine
from sqlalchemy.pool import PoolProxiedConnection
from sqlalchemy.util import greenlet_spawn

from .._shield import run_to_completion
from ._connection import PooledConnection, give_back

__all__ = ["ConnectionLease"]


class ConnectionLease:
    """Keeps one connection of the engine's pool for a series of sessions run one after
    another by the same task (a queue worker, a batch job): ``DbSession(engine,
    lease=lease)``. Each session still ends its transaction and resets the connection
    exactly as usual; only the pool checkout and checkin between sessions are saved. A
    connection found invalid is given back and replaced on the next session.

    Not safe to share between tasks; close it (or use ``async with``) when done.
    """

    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine
        self._fairy: PoolProxiedConnection | None = None
        self._connection: PooledConnection | None = None
        #: Whether the last session on this lease found the server unreachable while
        #: cleaning up (see ``DbSession.server_unreachable``).
        self.server_unreachable = False

    async def checkout(self) -> PoolProxiedConnection:
        """The leased connection, checked out from the pool if there is none."""
        fairy = self._fairy
        if fairy is not None and fairy.is_valid:
            return fairy
        if fairy is not None:
            await self._give_back(fairy, None)
        self._fairy = await greenlet_spawn(self.engine.sync_engine.raw_connection)
        return self._fairy

    async def session_connection(self) -> PooledConnection:
        """The leased connection as a session uses it (kept across sessions, so that its
        driver state is looked up once), fresh for a new session."""
        fairy = await self.checkout()
        connection = self._connection
        if connection is None or connection.fairy is not fairy:
            connection = self._connection = PooledConnection(self.engine, fairy)
        else:
            connection.begin_session()
        return connection

    async def release(self, fairy: PoolProxiedConnection, wrapper: AsyncConnection | None) -> None:
        """End of a session: keep a healthy connection, give an invalidated one back."""
        if fairy.is_valid and (wrapper is None or not wrapper.invalidated):
            return  # the SQLAlchemy wrapper, if any, is dropped without closing the fairy
        await self._give_back(fairy, wrapper)

    async def close(self) -> None:
        """Return the connection to the pool."""
        if self._fairy is not None:
            await run_to_completion(self._give_back(self._fairy, None))

    async def _give_back(
        self, fairy: PoolProxiedConnection, wrapper: AsyncConnection | None
    ) -> None:
        if self._fairy is fairy:
            self._fairy = None
            self._connection = None
        await give_back(fairy, wrapper)

    async def __aenter__(self) -> ConnectionLease:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()
