"""The FastAPI integration: the session dependency commits before the response is sent,
so a failed commit is an error response; library errors map to proper statuses; the
Redis and producer dependencies hand endpoints the application's client, can be
overridden, and say what is missing when the app was not started through SafeSync."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any, cast
from urllib.parse import urlsplit

import httpx
import pytest
from fastapi import Depends, FastAPI
from redis.asyncio import Redis
from sqlalchemy.ext.asyncio import AsyncEngine

from safesync_async import (
    ConfigurationError,
    DatabaseDisconnectError,
    DbSession,
    DeadlockError,
    LockTimeoutError,
    QueueProducer,
    create_engine,
)
from safesync_async.fastapi import (
    RedisDep,
    SafeSync,
    SafeSyncDep,
    SessionDep,
    install_exception_handlers,
    producer,
)

from .conftest import TableFactory
from .support.backends import Backend
from .support.proxy import Action, TcpProxy
from .support.settings import DATABASE_URL


def _app(safesync: SafeSync, table: str) -> FastAPI:
    app = FastAPI(lifespan=safesync.lifespan)
    install_exception_handlers(app)

    @app.post("/rows/{row}")
    async def add(row: int, session: SessionDep) -> dict[str, int]:
        await session.execute(f"INSERT INTO {table} VALUES (:id)", {"id": row})
        return {"row": row}

    @app.get("/fail/{kind}")
    async def fail(kind: str) -> None:
        errors = {
            "deadlock": DeadlockError("deadlock", errno=1213),
            "lock": LockTimeoutError("busy", key="k", lock_name="n"),
            "down": DatabaseDisconnectError("gone"),
        }
        raise errors[kind]

    return app


async def _client(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            yield client


async def test_commit_happens_before_the_response(
    engine: AsyncEngine, backend: Backend, make_table: TableFactory
) -> None:
    """When the endpoint's response arrives, its row is already committed and visible."""
    table = await make_table("CREATE TABLE {table} (id INT PRIMARY KEY)")
    app = _app(SafeSync(backend.url), table)
    async for client in _client(app):
        reply = await client.post("/rows/1")
        assert reply.status_code == 200
        async with DbSession(engine) as s:
            assert await s.execute_scalar(f"SELECT COUNT(*) FROM {table}") == 1
        duplicate = await client.post("/rows/1")
        assert duplicate.status_code == 500  # a failed statement is never a 200


async def test_failed_commit_is_an_error_response(
    backend: Backend, make_table: TableFactory
) -> None:
    """A COMMIT whose reply is lost gives 500 'outcome unknown', not 200."""
    table = await make_table("CREATE TABLE {table} (id INT PRIMARY KEY)")
    url = urlsplit(backend.url)
    async with TcpProxy(url.hostname or "127.0.0.1", url.port or 3306) as proxy:
        proxied = create_engine(backend.url.replace(f":{url.port}/", f":{proxy.port}/"))
        try:
            app = _app(SafeSync(engine=proxied), table)
            async for client in _client(app):
                proxy.add_trigger(backend.commit_packet, Action.CUT_AFTER)
                reply = await client.post("/rows/7")
                assert reply.status_code == 500
                assert reply.json()["error"] == "CommitOutcomeUnknownError"
        finally:
            await proxied.dispose()


@pytest.mark.parametrize(("kind", "status"), [("deadlock", 409), ("lock", 409), ("down", 503)])
async def test_library_errors_map_to_statuses(
    backend: Backend, make_table: TableFactory, kind: str, status: int
) -> None:
    """Conflicts and busy locks are 409, an unavailable database 503 with Retry-After."""
    table = await make_table("CREATE TABLE {table} (id INT PRIMARY KEY)")
    async for client in _client(_app(SafeSync(backend.url), table)):
        reply = await client.get(f"/fail/{kind}")
        assert reply.status_code == status
        assert reply.headers["retry-after"] == "1"


def test_safesync_needs_exactly_one_database() -> None:
    """SafeSync refuses both or neither of database_url and engine."""
    with pytest.raises(ValueError, match="either"):
        SafeSync()


# -- Redis and producer dependencies ---------------------------------------------------


def _queue_app(safesync: SafeSync, events: Any, *, lifespan: bool = True) -> FastAPI:
    """Endpoints using RedisDep, a producer() dependency and SafeSyncDep."""
    app = FastAPI(lifespan=safesync.lifespan if lifespan else None)

    @app.post("/keys/{key}")
    async def set_key(key: str, redis: RedisDep, found: SafeSyncDep) -> dict[str, bool]:
        await redis.set(key, "set")
        return {"same_client": redis is found.redis, "engine": found.engine is not None}

    # A local Annotated alias would be a string FastAPI cannot resolve (postponed
    # annotations), so this endpoint takes the dependency as a default.
    @app.post("/events")
    async def publish(producer: QueueProducer = Depends(events)) -> dict[str, str]:  # noqa: B008
        return {"id": await producer.publish({"n": 1}, idempotency_key="event-1")}

    return app


async def _serve(app: FastAPI, *, lifespan: bool = True) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        if not lifespan:
            yield client
            return
        async with app.router.lifespan_context(app):
            yield client


async def test_redis_and_producer_dependencies_use_the_apps_client(
    redis: Redis, stream: str
) -> None:
    """RedisDep is the client SafeSync was given, a producer() dependency publishes to
    its stream through it, and the lifespan leaves a client it did not create open."""
    engine = create_engine(DATABASE_URL)
    try:
        app = _queue_app(SafeSync(engine=engine, redis=redis), producer(stream))
        async for client in _serve(app):
            reply = await client.post(f"/keys/{stream}:key")
            assert reply.json() == {"same_client": True, "engine": True}
            published = await client.post("/events")
            assert published.status_code == 200
        assert await redis.get(f"{stream}:key") == b"set"  # still open after shutdown
        entries = cast(list[tuple[bytes, dict[bytes, bytes]]], await redis.xrange(stream))
        assert [(i.decode(), f[b"idempotency_key"]) for i, f in entries] == [
            (published.json()["id"], b"event-1")
        ]
    finally:
        await engine.dispose()


async def test_producer_dependency_can_be_overridden(redis: Redis, stream: str) -> None:
    """The function producer() returns is the key for app.dependency_overrides, so a test
    can send an endpoint's messages to a stream of its own."""
    events = producer(f"{stream}:production")
    app = _queue_app(SafeSync(DATABASE_URL, redis=redis), events)
    app.dependency_overrides[events] = lambda: QueueProducer(redis, stream, registry=None)
    async for client in _serve(app):
        assert (await client.post("/events")).status_code == 200
    assert await redis.xlen(stream) == 1
    assert await redis.exists(f"{stream}:production") == 0


async def test_dependencies_say_what_is_missing(redis: Redis, stream: str) -> None:
    """Without SafeSync's lifespan the dependencies raise a RuntimeError naming it, and
    RedisDep on a SafeSync without Redis says to pass redis_url or redis."""
    app = _queue_app(SafeSync(DATABASE_URL, redis=redis), producer(stream), lifespan=False)
    async for client in _serve(app, lifespan=False):
        with pytest.raises(RuntimeError, match=r"no SafeSync.*lifespan"):
            await client.post("/events")
    app = _queue_app(SafeSync(DATABASE_URL), producer(stream))
    async for client in _serve(app):
        with pytest.raises(RuntimeError, match="pass redis_url or redis"):
            await client.post(f"/keys/{stream}:key")


def test_producer_needs_a_stream_key() -> None:
    """producer() refuses an empty stream key when the dependency is defined, not when
    a request first uses it."""
    with pytest.raises(ConfigurationError, match="stream key"):
        producer("")
