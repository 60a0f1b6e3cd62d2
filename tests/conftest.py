"""Project test configuration: the shipped fixtures (safesync_async.testing), anyio on
asyncio, real servers on loopback."""

from __future__ import annotations

import inspect
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from safesync_async import DbSession

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


@pytest.fixture
def engine(safesync_engine: AsyncEngine) -> AsyncEngine:
    """A private engine (and pool) per test, disposed afterwards (the shipped fixture)."""
    return safesync_engine


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
