"""Project test configuration: the shipped fixtures (safesync_async.testing), anyio on
asyncio, real servers on loopback. Tests that use ``engine`` run once per database
backend (MariaDB and PostgreSQL). Tests marked ``cluster`` that use ``redis`` also run
on a private Redis Cluster (3 masters, 3 replicas) started once for the session; those
runs use one database backend (MariaDB), as the Redis topology does not touch the
database half."""

from __future__ import annotations

import inspect
import shutil
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator

import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from safesync_async import (
    DbSession,
    EpochFence,
    Inbox,
    RedisClient,
    create_engine,
    create_redis_client,
)

from .support.backends import MARIADB, POSTGRES, Backend
from .support.cluster import PrivateRedisCluster

STANDALONE, CLUSTER = "standalone", "cluster"

pytest_plugins = ["safesync_async.testing"]


@pytest.hookimpl(tryfirst=True)
def pytest_pycollect_makeitem(collector: pytest.Collector, name: str, obj: object) -> None:
    """Run every ``async def`` test under anyio without repeating the marker."""
    inner = getattr(getattr(obj, "hypothesis", None), "inner_test", obj)  # @given wraps tests
    is_test = isinstance(collector, pytest.Module | pytest.Class) and collector.istestfunction(
        obj, name
    )
    if is_test and inspect.iscoroutinefunction(inner):
        pytest.mark.anyio(obj)


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """Tests marked ``cluster`` run on standalone Redis and on a Redis Cluster."""
    if "redis_server" in metafunc.fixturenames and metafunc.definition.get_closest_marker(
        "cluster"
    ):
        metafunc.parametrize("redis_server", [STANDALONE, CLUSTER])


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Cluster runs use MariaDB only (see the module docstring)."""
    kept, dropped = [], []
    for item in items:
        params = getattr(getattr(item, "callspec", None), "params", {})
        backend = params.get("backend")
        on_cluster = params.get("redis_server") == CLUSTER
        if on_cluster and isinstance(backend, Backend) and backend is not MARIADB:
            dropped.append(item)
        else:
            kept.append(item)
    if dropped:
        config.hook.pytest_deselected(items=dropped)
        items[:] = kept


@pytest.fixture(params=[MARIADB, POSTGRES], ids=lambda backend: backend.name)
def backend(request: pytest.FixtureRequest) -> Backend:
    """The database backend the test runs against."""
    selected: Backend = request.param
    return selected


@pytest.fixture
async def engine(backend: Backend) -> AsyncIterator[AsyncEngine]:
    """A private engine (and pool) per test on the backend under test, disposed afterwards."""
    created = create_engine(backend.url, pool_size=8, max_overflow=40)
    try:
        yield created
    finally:
        await created.dispose()


@pytest.fixture
def unique_name() -> Callable[[str], str]:
    """Names unique to this test run, so tests never share tables or keys."""

    def make(prefix: str) -> str:
        return f"{prefix}_{uuid.uuid4().hex[:12]}"

    return make


TableFactory = Callable[[str], Awaitable[str]]


class _Quoted:
    """``{q[order]}`` in a DDL template: the identifier quoted for the backend."""

    def __init__(self, backend: Backend) -> None:
        self._backend = backend

    def __getitem__(self, identifier: str) -> str:
        return self._backend.q(identifier)


@pytest.fixture
async def inbox(engine: AsyncEngine, unique_name: Callable[[str], str]) -> AsyncIterator[Inbox]:
    """An inbox table on the shared database, dropped afterwards."""
    box = Inbox(unique_name("inbox"))
    await box.create_table(engine)
    yield box
    async with engine.begin() as conn:
        await conn.run_sync(box.table.drop)


@pytest.fixture
async def fence(
    engine: AsyncEngine, unique_name: Callable[[str], str]
) -> AsyncIterator[EpochFence]:
    """A partition epochs table on the shared database, dropped afterwards."""
    created = EpochFence(unique_name("epochs"))
    await created.create_table(engine)
    yield created
    async with engine.begin() as conn:
        await conn.run_sync(created.table.drop)


@pytest.fixture
def redis_server() -> str:
    """Which Redis ``redis`` talks to: standalone (tests marked ``cluster`` also run on
    the session's Redis Cluster)."""
    return STANDALONE


@pytest.fixture(scope="session")
def redis_cluster() -> Iterator[PrivateRedisCluster]:
    """A private Redis Cluster (3 masters, 3 replicas) for the session, removed afterwards.
    Tests must not kill or reconfigure its nodes: fault tests start their own."""
    for binary in ("redis-server", "redis-cli"):
        if shutil.which(binary) is None:
            pytest.fail(f"{binary} is not installed: the cluster tests start a local cluster")
    cluster = PrivateRedisCluster().start()
    try:
        yield cluster
    finally:
        cluster.close()


@pytest.fixture
async def redis(
    request: pytest.FixtureRequest,
    redis_server: str,
    safesync_redis: RedisClient,
    safesync_key_prefix: str,
) -> AsyncIterator[RedisClient]:
    """The shipped client fixture (keys under the test's prefix are deleted afterwards),
    or a cluster client to the session's cluster, cleaned up the same way."""
    if redis_server == STANDALONE:
        yield safesync_redis
        return
    from safesync_async.testing import delete_test_keys  # a plugin: imported once loaded

    cluster: PrivateRedisCluster = request.getfixturevalue("redis_cluster")
    client = create_redis_client(cluster.url, cluster=True, block_ms=200)
    try:
        yield client
    finally:
        await delete_test_keys(client, safesync_key_prefix)
        await client.aclose()


@pytest.fixture
def stream(safesync_key_prefix: str) -> str:
    """A unique stream key (no group yet); it and its dead letters are cleaned up."""
    return f"{safesync_key_prefix}stream"


@pytest.fixture
async def make_table(
    engine: AsyncEngine, backend: Backend, unique_name: Callable[[str], str]
) -> AsyncIterator[TableFactory]:
    """Create tables from a DDL template (``{table}``, ``{q[name]}`` for quoted names,
    ``{autoinc}`` for an auto-increment primary key); drop them after the test."""
    created: list[str] = []

    async def make(ddl_template: str) -> str:
        name = unique_name("t")
        ddl = ddl_template.format(table=name, q=_Quoted(backend), autoinc=backend.autoinc_pk)
        async with DbSession(engine, registry=None) as session:
            await session.execute(ddl)
        created.append(name)
        return name

    yield make
    async with DbSession(engine, registry=None) as session:
        for name in created:
            await session.execute(f"DROP TABLE IF EXISTS {name}")
