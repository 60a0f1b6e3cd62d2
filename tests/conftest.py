"""Project test configuration: anyio on asyncio, real servers on loopback."""

from __future__ import annotations

import inspect
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from safesync_async import DbSession

from .support.settings import DATABASE_URL


@pytest.fixture(scope="session")
def anyio_backend() -> str:
    """SQLAlchemy's asyncio extension and redis.asyncio need the asyncio backend."""
    return "asyncio"


@pytest.hookimpl(tryfirst=True)
def pytest_pycollect_makeitem(collector: pytest.Collector, name: str, obj: object) -> None:
    """Run every ``async def`` test under anyio without repeating the marker."""
    inner = getattr(getattr(obj, "hypothesis", None), "inner_test", obj)  # @given wraps tests
    is_test = isinstance(collector, pytest.Module | pytest.Class) and collector.istestfunction(
        obj, name
    )
    if is_test and inspect.iscoroutinefunction(inner):
        pytest.mark.anyio(obj)


@pytest.fixture
async def engine() -> AsyncIterator[AsyncEngine]:
    """A private engine (and pool) per test, disposed afterwards."""
    eng = create_async_engine(DATABASE_URL, pool_size=8, max_overflow=40, pool_pre_ping=True)
    try:
        yield eng
    finally:
        await eng.dispose()


@pytest.fixture
def unique_name() -> Callable[[str], str]:
    """Names unique to this test run, so tests never share tables or keys."""

    def make(prefix: str) -> str:
        return f"{prefix}_{uuid.uuid4().hex[:12]}"

    return make


TableFactory = Callable[[str], Awaitable[str]]


@pytest.fixture
async def make_table(
    engine: AsyncEngine, unique_name: Callable[[str], str]
) -> AsyncIterator[TableFactory]:
    """Create tables from a DDL template with ``{table}``; drop them after the test."""
    created: list[str] = []

    async def make(ddl_template: str) -> str:
        name = unique_name("t")
        async with DbSession(engine, registry=None) as session:
            await session.execute(ddl_template.format(table=name))
        created.append(name)
        return name

    yield make
    async with DbSession(engine, registry=None) as session:
        for name in created:
            await session.execute(f"DROP TABLE IF EXISTS `{name}`")
