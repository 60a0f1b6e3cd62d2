"""pytest fixtures for applications that use safesync_async.

Opt in from your ``conftest.py``::

    pytest_plugins = ["safesync_async.testing"]

The plugin is opt-in rather than registered as an entry point so that installing the
library never adds fixtures (or their names) to unrelated test suites.

Fixtures (async ones run under anyio's pytest plugin on asyncio; mark tests with
``@pytest.mark.anyio`` or use anyio's auto mode):

- ``safesync_database_url`` / ``safesync_redis_url``: from the environment variables
  ``SAFESYNC_DATABASE_URL`` / ``SAFESYNC_REDIS_URL``, else the ini options of the same
  names, else embedded servers (a private PostgreSQL and Valkey, the ``embedded`` extra)
  started once for the test session, so a suite runs with nothing installed.
- ``safesync_engine``: an engine from :func:`safesync_async.create_engine`, disposed
  after the test.
- ``safesync_session``: a :class:`DbSession` rolled back after the test.
- ``safesync_redis``: a Redis client; keys starting with ``safesync_key_prefix`` (and the
  keys derived from them, such as dead-letter streams) are deleted after the test. With
  ``SAFESYNC_REDIS_CLUSTER=1`` (or the ini option ``safesync_redis_cluster = true``)
  the URL names a node of a Redis Cluster and the client is a cluster client.
- ``safesync_key_prefix``: a prefix unique to the test, for the Redis keys it creates.
- ``safesync_stream``: a :class:`StreamFixture`, a unique stream with its consumer group,
  a producer, and helpers to build consumers and run them until the stream is drained.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from ..db.engine import create_engine
from ..db.session import DbSession
from ..embedded import EmbeddedServers
from ..queue.client import RedisClient, create_redis_client
from ..queue.config import QueueConfig
from ..queue.consumer import QueueConsumer
from ..queue.inbox import Inbox
from ..queue.keys import dead_letter_key
from ..queue.producer import QueueProducer

__all__ = ["StreamFixture", "delete_test_keys"]


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addini("safesync_database_url", "database URL for the safesync_* fixtures")
    parser.addini("safesync_redis_url", "Redis URL for the safesync_* fixtures")
    parser.addini(
        "safesync_redis_cluster",
        "true if safesync_redis_url names a node of a Redis Cluster",
        type="bool",
        default=False,
    )


def _setting(request: pytest.FixtureRequest, name: str) -> str | None:
    value = os.environ.get(name.upper()) or request.config.getini(name)
    return value if isinstance(value, str) and value else None


@pytest.fixture(scope="session")
def safesync_embedded_servers() -> Iterator[EmbeddedServers]:
    """Embedded PostgreSQL and Valkey for the session, used when no URL is configured."""
    servers = EmbeddedServers().start()
    try:
        yield servers
    finally:
        servers.stop()


@pytest.fixture(scope="session")
def anyio_backend() -> str:
    """SQLAlchemy's asyncio extension and redis.asyncio run on asyncio."""
    return "asyncio"


@pytest.fixture(scope="session")
def safesync_database_url(request: pytest.FixtureRequest) -> str:
    configured = _setting(request, "safesync_database_url")
    if configured is not None:
        return configured
    servers: EmbeddedServers = request.getfixturevalue("safesync_embedded_servers")
    return servers.database_url


@pytest.fixture(scope="session")
def safesync_redis_url(request: pytest.FixtureRequest) -> str:
    configured = _setting(request, "safesync_redis_url")
    if configured is not None:
        return configured
    servers: EmbeddedServers = request.getfixturevalue("safesync_embedded_servers")
    return servers.redis_url


@pytest.fixture
async def safesync_engine(safesync_database_url: str) -> AsyncIterator[AsyncEngine]:
    engine = create_engine(safesync_database_url, pool_size=8, max_overflow=40)
    try:
        yield engine
    finally:
        await engine.dispose()


class _RollBack(Exception):
    """Raised inside the fixture's session to roll it back at teardown."""


@pytest.fixture
async def safesync_session(safesync_engine: AsyncEngine) -> AsyncIterator[DbSession]:
    try:
        async with DbSession(safesync_engine, operation="test") as session:
            yield session
            raise _RollBack
    except _RollBack:
        pass


@pytest.fixture
def safesync_key_prefix() -> str:
    return f"test:{uuid.uuid4().hex[:12]}:"


def _cluster_setting(request: pytest.FixtureRequest) -> bool:
    value = os.environ.get("SAFESYNC_REDIS_CLUSTER")
    if value is not None:
        return value.strip().lower() in ("1", "true", "yes", "on")
    return bool(request.config.getini("safesync_redis_cluster"))


async def delete_test_keys(client: RedisClient, prefix: str) -> None:
    """Delete the keys starting with ``prefix`` and those derived from them (in the
    stream's hash slot, they start with ``{`` + ``prefix``)."""
    keys = [
        key
        for pattern in (f"{prefix}*", "{" + prefix + "*")
        async for key in client.scan_iter(match=pattern)
    ]
    for key in keys:  # one by one: on a cluster they live in different slots
        await client.delete(key)


@pytest.fixture
async def safesync_redis(
    request: pytest.FixtureRequest, safesync_redis_url: str, safesync_key_prefix: str
) -> AsyncIterator[RedisClient]:
    client = create_redis_client(
        safesync_redis_url, cluster=_cluster_setting(request), block_ms=200
    )
    try:
        yield client
    finally:
        await delete_test_keys(client, safesync_key_prefix)
        await client.aclose()


@dataclass
class StreamFixture:
    """A unique stream with its consumer group, for one test.

    Attributes:
        key: the stream key, ``<safesync_key_prefix>stream`` (deleted after the test).
        group: the consumer group, ``test-group``, created from id ``0``.
        redis: the ``safesync_redis`` client.
        producer: a :class:`QueueProducer` for the stream that records no metrics.
    """

    key: str
    group: str
    redis: RedisClient
    producer: QueueProducer

    @property
    def dead_letters(self) -> str:
        """The dead-letter stream's key (:func:`~safesync_async.dead_letter_key`)."""
        return dead_letter_key(self.key)

    def config(self, **overrides: Any) -> QueueConfig:
        """A QueueConfig for this stream and group with test-friendly timings
        (``consumer_name="test-consumer"``, ``block_ms=100``, ``claim_min_idle_ms=500``,
        ``claim_interval_ms=100``); ``overrides`` replace any QueueConfig field."""
        settings: dict[str, Any] = {
            "stream_key": self.key,
            "consumer_group": self.group,
            "consumer_name": "test-consumer",
            "block_ms": 100,
            "claim_min_idle_ms": 500,
            "claim_interval_ms": 100,
        }
        settings.update(overrides)
        return QueueConfig(**settings)

    def consumer(self, *, inbox: Inbox | None = None, **overrides: Any) -> QueueConsumer:
        """A consumer of :meth:`config` with ``overrides`` and the inbox, recording no
        metrics."""
        return QueueConsumer(self.redis, self.config(**overrides), inbox=inbox, registry=None)

    async def drain(
        self,
        handler: Callable[..., Awaitable[None]],
        *,
        engine: AsyncEngine | None = None,
        inbox: Inbox | None = None,
        **overrides: Any,
    ) -> QueueConsumer:
        """Run :meth:`consumer` (``inbox``, ``overrides``: QueueConfig fields such as
        ``max_deliveries`` or ``claim_min_idle_ms``) until every entry is handled (acked
        or dead-lettered), none pending and nothing in flight; returns the consumer, for
        its ``statistics()``. With ``engine`` the handler is ``handler(msg, session)``,
        else ``handler(msg)``. It does not return while a message keeps failing with
        deliveries left: bound it with ``asyncio.timeout``."""
        consumer = self.consumer(inbox=inbox, **overrides)
        await consumer.run_until_drained(handler, engine=engine)
        return consumer


@pytest.fixture
async def safesync_stream(safesync_redis: RedisClient, safesync_key_prefix: str) -> StreamFixture:
    key = f"{safesync_key_prefix}stream"
    await safesync_redis.xgroup_create(key, "test-group", id="0", mkstream=True)
    return StreamFixture(
        key=key,
        group="test-group",
        redis=safesync_redis,
        producer=QueueProducer(safesync_redis, key, registry=None),
    )
