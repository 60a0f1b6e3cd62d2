"""Queue test fixtures, on top of the shipped ones: a Redis client and a stream key whose
keys are deleted after each test."""

from __future__ import annotations

import pytest
from redis.asyncio import Redis


@pytest.fixture
def redis(safesync_redis: Redis) -> Redis:
    """The shipped client fixture: keys under the test's prefix are deleted afterwards."""
    return safesync_redis


@pytest.fixture
def stream(safesync_key_prefix: str) -> str:
    """A unique stream key (no group yet); it and its dead letters are cleaned up."""
    return f"{safesync_key_prefix}stream"
