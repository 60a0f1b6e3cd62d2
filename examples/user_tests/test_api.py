"""How an application tests its FastAPI app with the shipped fixtures: the app runs on
the fixtures' engine and Redis client, in process, through httpx."""

from __future__ import annotations

# --8<-- [start:client]
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from redis.asyncio import Redis
from sqlalchemy.ext.asyncio import AsyncEngine

from safesync_async import DbSession, QueueMessage
from safesync_async.fastapi import SafeSync
from safesync_async.testing import StreamFixture

from orders_api import create_app, order_reminders

pytestmark = pytest.mark.anyio


@pytest.fixture
async def orders_table(safesync_engine: AsyncEngine) -> AsyncIterator[str]:
    """The table the app writes to, dropped after the test."""
    async with DbSession(safesync_engine) as session:
        await session.execute(
            "CREATE TABLE IF NOT EXISTS user_api_orders (id INT PRIMARY KEY, total INT NOT NULL)"
        )
        await session.execute("DELETE FROM user_api_orders")  # left by an interrupted run
    yield "user_api_orders"
    async with DbSession(safesync_engine) as session:
        await session.execute("DROP TABLE user_api_orders")


@pytest.fixture
async def client(
    safesync_engine: AsyncEngine, safesync_redis: Redis, safesync_stream: StreamFixture
) -> AsyncIterator[httpx.AsyncClient]:
    """The app on the fixtures' engine and Redis client (its lifespan leaves them open),
    with its reminders going to the test's own stream."""
    app = create_app(SafeSync(engine=safesync_engine, redis=safesync_redis))
    app.dependency_overrides[order_reminders] = lambda: safesync_stream.producer
    async with app.router.lifespan_context(app):  # start-up and shutdown, as a server would
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            yield client


# --8<-- [end:client]


# --8<-- [start:tests]
async def test_created_order_is_committed(
    client: httpx.AsyncClient, orders_table: str, safesync_engine: AsyncEngine
) -> None:
    """When the 201 arrives, the order is in the database; a duplicate is an error."""
    reply = await client.post("/orders", json={"id": 1, "total": 30})
    assert reply.status_code == 201
    async with DbSession(safesync_engine) as session:
        total = await session.execute_scalar(f"SELECT total FROM {orders_table} WHERE id = 1")
    assert total == 30
    duplicate = await client.post("/orders", json={"id": 1, "total": 30})
    assert duplicate.status_code == 500
    assert duplicate.json()["error"] == "DuplicateKeyError"


async def test_reminder_reaches_the_stream(
    client: httpx.AsyncClient, safesync_stream: StreamFixture
) -> None:
    """A reminder request is published once, and a consumer of the stream gets it."""
    reply = await client.post("/orders/7/reminders")
    assert reply.status_code == 202
    received: list[Any] = []

    async def handle(message: QueueMessage[Any]) -> None:
        received.append(message.payload)

    await safesync_stream.drain(handle)
    assert received == [{"order": 7}]


async def test_health_and_metrics(client: httpx.AsyncClient) -> None:
    """/health reaches Redis through RedisDep; /metrics serves the Prometheus text format."""
    assert (await client.get("/health")).json() == {"redis": True}
    metrics = await client.get("/metrics")
    assert metrics.status_code == 200
    assert metrics.headers["content-type"].startswith("text/plain")


# --8<-- [end:tests]
