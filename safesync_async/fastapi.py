"""FastAPI integration: a lifespan that owns the engine and the Redis client, dependencies
that hand them to endpoints (a session that commits before the response is sent, the Redis
client, a producer per stream), and error responses for the library's exceptions.

    safesync = SafeSync(database_url, redis_url)
    app = FastAPI(lifespan=safesync.lifespan)
    install_exception_handlers(app)

    order_events = producer("orders")

    @app.post("/orders")
    async def create(
        order: Order,
        session: SessionDep,
        redis: RedisDep,
        events: Annotated[QueueProducer, Depends(order_events)],
    ) -> dict[str, int]:
        ...

``SessionDep`` is ``Annotated[DbSession, Depends(db_session, scope="function")]``: the
dependency's exit (COMMIT) runs when the endpoint returns, *before* the response is
sent, so a failed commit becomes an error response and never a 200.

Every dependency finds the :class:`SafeSync` through the application its request
belongs to, so tests can build the app around objects of their own
(``SafeSync(engine=..., redis=...)``) and override any dependency as usual
(``app.dependency_overrides[order_events] = ...``).
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from typing import Annotated, Any

try:
    from fastapi import Depends, FastAPI, Request
    from fastapi.responses import JSONResponse
except ImportError as exc:  # pragma: no cover - exercised only without the extra
    raise ImportError(
        "safesync_async.fastapi needs FastAPI: pip install 'safesync-async[fastapi]'"
    ) from exc

from sqlalchemy.ext.asyncio import AsyncEngine

from .db.engine import create_engine
from .db.session import DbSession
from .errors import (
    AdvisoryLockError,
    CommitOutcomeUnknownError,
    ConfigurationError,
    DatabaseDisconnectError,
    LockNotAvailableError,
    QueueUnavailableError,
    RetryableTransactionError,
    RetryExhaustedError,
    SafeSyncError,
    VersionConflictError,
)
from .metrics import DEFAULT_REGISTRY, RegistryArg
from .queue.client import RedisClient, create_redis_client
from .queue.codec import Codec
from .queue.producer import QueueProducer

__all__ = [
    "RedisDep",
    "SafeSync",
    "SafeSyncDep",
    "SessionDep",
    "db_session",
    "get_safesync",
    "install_exception_handlers",
    "producer",
    "redis_client",
]


class SafeSync:
    """The database engine and Redis client of an application, opened and closed by the
    app's lifespan. Pass ready-made ``engine`` / ``redis`` objects instead of URLs to
    share them with other code, or to run the app in tests on the fixtures'
    (``SafeSync(engine=safesync_engine, redis=safesync_redis)``): the lifespan then
    leaves them open. ``redis_cluster=True`` makes ``redis_url`` name a node of a Redis
    Cluster (see :func:`~safesync_async.create_redis_client`)."""

    def __init__(
        self,
        database_url: str | None = None,
        redis_url: str | None = None,
        *,
        engine: AsyncEngine | None = None,
        redis: RedisClient | None = None,
        redis_cluster: bool = False,
        engine_options: Mapping[str, Any] | None = None,
    ) -> None:
        if (database_url is None) == (engine is None):
            raise ValueError("give either database_url or engine")
        self._database_url = database_url
        self._redis_url = redis_url
        self._engine = engine
        self._redis = redis
        self._redis_cluster = redis_cluster
        self._engine_options = dict(engine_options or {})
        self._owns_engine = engine is None
        self._owns_redis = redis is None and redis_url is not None

    @property
    def engine(self) -> AsyncEngine:
        """The engine; RuntimeError before the lifespan started it."""
        if self._engine is None:
            raise RuntimeError("SafeSync is not started: use it as the app's lifespan")
        return self._engine

    @property
    def redis(self) -> RedisClient:
        """The Redis client; RuntimeError if SafeSync has none (or is not started)."""
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
            self._redis = create_redis_client(self._redis_url, cluster=self._redis_cluster)
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


async def get_safesync(request: Request) -> SafeSync:
    """The :class:`SafeSync` of the request's application, set by its lifespan.

    Raises RuntimeError (a 500) when the application was not started through
    ``SafeSync.lifespan``.
    """
    safesync = getattr(request.app.state, "safesync", None)
    if not isinstance(safesync, SafeSync):
        raise RuntimeError(
            "this application has no SafeSync: create it with "
            "FastAPI(lifespan=safesync.lifespan), or enter `async with "
            "safesync.lifespan(app)` in your own lifespan (in tests too: "
            "`async with app.router.lifespan_context(app)`)"
        )
    return safesync


async def db_session(request: Request) -> AsyncIterator[DbSession]:
    """The session dependency for apps using ``SafeSync.lifespan``: one transaction per
    request (operation label ``http``), committed when the endpoint returns."""
    safesync = await get_safesync(request)
    async with DbSession(safesync.engine, operation="http") as session:
        yield session


async def redis_client(request: Request) -> RedisClient:
    """The application's Redis client (from ``redis_url`` or ``redis``); RuntimeError
    when SafeSync was given neither."""
    return (await get_safesync(request)).redis


def producer(
    stream: str,
    *,
    codec: Codec[Any] | None = None,
    trace_context: bool = True,
    registry: RegistryArg = DEFAULT_REGISTRY,
) -> Callable[[Request], Awaitable[QueueProducer]]:
    """A dependency that gives an endpoint a :class:`QueueProducer` for ``stream`` on the
    application's Redis client::

        order_events = producer("orders")
        OrderEvents = Annotated[QueueProducer, Depends(order_events)]

    Keep the returned function (``order_events``) to override it in tests:
    ``app.dependency_overrides[order_events] = lambda: test_producer``. The keyword
    arguments are the producer's. Publishing from an endpoint is not atomic with its
    database transaction: for events that must exist if and only if the transaction
    commits, use an :class:`~safesync_async.Outbox` in the session instead.
    """
    if not isinstance(stream, str) or not stream:
        raise ConfigurationError("producer() needs the stream key, a non-empty string")

    async def stream_producer(request: Request) -> QueueProducer:
        redis = (await get_safesync(request)).redis
        return QueueProducer(
            redis, stream, codec=codec, trace_context=trace_context, registry=registry
        )

    stream_producer.__name__ = stream_producer.__qualname__ = f"producer({stream!r})"
    return stream_producer


#: ``session: SessionDep`` in an endpoint: one transaction, committed before the response.
SessionDep = Annotated[DbSession, Depends(db_session, scope="function")]
#: ``redis: RedisDep`` in an endpoint: the application's Redis client.
RedisDep = Annotated[RedisClient, Depends(redis_client)]
#: ``safesync: SafeSyncDep`` in an endpoint: the engine (``.engine``) and Redis client,
#: for example for :func:`~safesync_async.retry_transaction`.
SafeSyncDep = Annotated[SafeSync, Depends(get_safesync)]

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
