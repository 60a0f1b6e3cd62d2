"""Project test configuration: the shipped fixtures (safesync_async.testing), anyio on
asyncio, real servers on loopback. Tests that use ``engine`` run once per database
backend (MariaDB and PostgreSQL)."""

from __future__ import annotations

import inspect
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest
from redis.asyncio import Redis
from sqlalchemy.ext.asyncio import AsyncEngine

from safesync_async import DbSession, create_engine

from .support.backends import MARIADB, POSTGRES, Backend

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
def redis(safesync_redis: Redis) -> Redis:
    """The shipped client fixture: keys under the test's prefix are deleted afterwards."""
    return safesync_redis


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
