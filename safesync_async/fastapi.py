"""FastAPI integration: a lifespan that owns the engine and the Redis client, a session
dependency that commits before the response is sent, and error responses for the
library's exceptions.

    safesync = SafeSync(database_url, redis_url)
    app = FastAPI(lifespan=safesync.lifespan)
    install_exception_handlers(app)

    @app.post("/orders")
    async def create(order: Order, session: SessionDep) -> dict[str, int]:
        ...

``SessionDep`` is ``Annotated[DbSession, Depends(db_session, scope="function")]``: the
dependency's exit (COMMIT) runs when the endpoint returns, *before* the response is
sent, so a failed commit becomes an error response and never a 200.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Mapping
from typing import Annotated, Any

try:
    from fastapi import Depends, FastAPI, Request
    from fastapi.responses import JSONResponse
except ImportError as exc:  # pragma: no cover - exercised only without the extra
    raise ImportError(
        "safesync_async.fastapi needs FastAPI: pip install 'safesync-async[fastapi]'"
    ) from exc

from redis.asyncio import Redis
from sqlalchemy.ext.asyncio import AsyncEngine

from .db.engine import create_engine
from .db.session import DbSession
from .errors import (
    AdvisoryLockError,
    CommitOutcomeUnknownError,
    DatabaseDisconnectError,
    LockNotAvailableError,
    QueueUnavailableError,
    RetryableTransactionError,
    RetryExhaustedError,
    SafeSyncError,
    VersionConflictError,
)
from .queue.client import create_redis_client

__all__ = ["SafeSync", "SessionDep", "db_session", "install_exception_handlers"]


class SafeSync:
    """The database engine and Redis client of an application, opened and closed by the
    app's lifespan. Pass ready-made ``engine`` / ``redis`` objects instead of URLs to
    share them with other code (they are then not closed by the lifespan)."""

    def __init__(
        self,
        database_url: str | None = None,
        redis_url: str | None = None,
        *,
        engine: AsyncEngine | None = None,
        redis: Redis | None = None,
        engine_options: Mapping[str, Any] | None = None,
    ) -> None:
        if (database_url is None) == (engine is None):
            raise ValueError("give either database_url or engine")
        self._database_url = database_url
        self._redis_url = redis_url
        self._engine = engine
        self._redis = redis
        self._engine_options = dict(engine_options or {})
        self._owns_engine = engine is None
        self._owns_redis = redis is None and redis_url is not None

    @property
    def engine(self) -> AsyncEngine:
        if self._engine is None:
            raise RuntimeError("SafeSync is not started: use it as the app's lifespan")
        return self._engine

    @property
    def redis(self) -> Redis:
        if self._redis is None:
            raise RuntimeError("no Redis client: pass redis_url or redis to SafeSync")
        return self._redis

    @contextlib.asynccontextmanager
    async def lifespan(self, app: FastAPI) -> AsyncIterator[None]:
        """``FastAPI(lifespan=safesync.lifespan)``: open on start-up, close on shutdown."""
        if self._owns_engine:
            assert self._database_url is not None
            self._engine = create_engine(self._database_url, **self._engine_options)
        if self._owns_redis:
            assert self._redis_url is not None
            self._redis = create_redis_client(self._redis_url)
        app.state.safesync = self
        try:
            yield
        finally:
            if self._owns_redis and self._redis is not None:
                await self._redis.aclose()
                self._redis = None
            if self._owns_engine and self._engine is not None:
                await self._engine.dispose()
                self._engine = None

    async def session(self) -> AsyncIterator[DbSession]:
        """A dependency yielding a DbSession; use with ``Depends(..., scope="function")``."""
        async with DbSession(self.engine, operation="http") as session:
            yield session


async def db_session(request: Request) -> AsyncIterator[DbSession]:
    """The session dependency for apps using ``SafeSync.lifespan``."""
    safesync: SafeSync = request.app.state.safesync
    async with DbSession(safesync.engine, operation="http") as session:
        yield session


#: ``session: SessionDep`` in an endpoint: one transaction, committed before the response.
SessionDep = Annotated[DbSession, Depends(db_session, scope="function")]

_STATUS: tuple[tuple[type[SafeSyncError], int, str], ...] = (
    (CommitOutcomeUnknownError, 500, "the outcome of the transaction is unknown"),
    (DatabaseDisconnectError, 503, "the database is unavailable, retry later"),
    (QueueUnavailableError, 503, "the queue is unavailable, retry later"),
    (RetryExhaustedError, 409, "conflicting concurrent updates, retry"),
    (RetryableTransactionError, 409, "conflicting concurrent updates, retry"),
    (VersionConflictError, 409, "the resource changed meanwhile, reload and retry"),
    (LockNotAvailableError, 409, "the resource is busy, retry"),
    (AdvisoryLockError, 409, "the resource is busy, retry"),
)


def install_exception_handlers(app: FastAPI) -> None:
    """Map the library's errors to responses: conflicts and busy locks to 409,
    unavailable database or Redis to 503 (with Retry-After), an unknown commit outcome
    and every other library error to 500. No error ever becomes a success."""

    async def handle(request: Request, exc: Exception) -> JSONResponse:
        status, detail = 500, "internal error"
        for cls, code, text in _STATUS:
            if isinstance(exc, cls):
                status, detail = code, text
                break
        headers = {"Retry-After": "1"} if status in (409, 503) else None
        return JSONResponse(
            {"detail": detail, "error": type(exc).__name__}, status_code=status, headers=headers
        )

    app.add_exception_handler(SafeSyncError, handle)
