"""The FastAPI integration: the session dependency commits before the response is sent,
so a failed commit is an error response, and library errors map to proper statuses."""

from __future__ import annotations

from collections.abc import AsyncIterator
from urllib.parse import urlsplit

import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy.ext.asyncio import AsyncEngine

from safesync_async import (
    DatabaseDisconnectError,
    DbSession,
    DeadlockError,
    LockTimeoutError,
    create_engine,
)
from safesync_async.fastapi import SafeSync, SessionDep, install_exception_handlers

from .conftest import TableFactory
from .support.backends import Backend
from .support.proxy import Action, TcpProxy


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
