"""Fixtures for the queue tests: a Redis client, unique stream names and cleanup."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable

import pytest
from redis.asyncio import Redis

from safesync_async import create_redis_client

from ..support.settings import REDIS_URL


@pytest.fixture
async def redis() -> AsyncIterator[Redis]:
    """A client made by the library's factory; keys created through ``stream`` are deleted."""
    client = create_redis_client(REDIS_URL, block_ms=200)
    try:
        yield client
    finally:
        await client.aclose()


@pytest.fixture
async def stream(redis: Redis, unique_name: Callable[[str], str]) -> AsyncIterator[str]:
    """A unique stream key; it and its dead-letter stream are deleted afterwards."""
    key = unique_name("test-stream")
    yield key
    await redis.delete(key, f"{key}:dead")
