"""Database outages other than a dropped connection, on private MariaDB and PostgreSQL
servers: a read-only window, a too-many-connections window, and a hung server while
every pooled connection is in use. A consumer (with an inbox) that meets them keeps its
messages pending without spending deliveries: nothing is dead-lettered, lost or applied
twice."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import pytest
from redis.asyncio import Redis
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine
from sqlalchemy.pool import NullPool

from safesync_async import DbSession, Inbox, QueueConsumer, QueueMessage, create_engine

from ..support.reliability import Recorder
from ..support.servers import PrivateMariaDB, PrivatePostgres
from .conftest import (
    PrivateServers,
    create_effects,
    effect_handler,
    effect_rows,
    publish_plain,
    queue_config,
    running,
    until,
    wait_settled,
)

pytestmark = pytest.mark.faults

DELIVERY = "Delivery under faults"
WINDOW_SECONDS = 3.0  # long enough for several claim rounds with max_deliveries=2
APP_PASSWORD = "app-pw"


@dataclass
class OutageServer:
    """A private server, an administrator connection to it, and the application's engine
    (an unprivileged user, so that read-only mode and connection limits apply to it)."""

    kind: str
    server: PrivateMariaDB | PrivatePostgres
    admin: AsyncEngine
    app_url: str

    async def admin_sql(self, *statements: str) -> None:
        async with self.admin.connect() as conn:
            autocommit = await conn.execution_options(isolation_level="AUTOCOMMIT")
            for sql in statements:
                await autocommit.exec_driver_sql(sql)

    async def read_only(self, on: bool) -> None:
        if self.kind == "mariadb":
            await self.admin_sql(f"SET GLOBAL read_only = {int(on)}")
        else:
            value = "on" if on else "off"
            await self.admin_sql(
                f"ALTER SYSTEM SET default_transaction_read_only = {value}",
                "SELECT pg_reload_conf()",
            )

    async def refuse_connections(self, on: bool) -> None:
        """Limit connections so the application gets 'too many connections' (1040 /
        53300) when it reconnects, and end its current connections so that it must."""
        if self.kind == "mariadb":
            await self.admin_sql(f"SET GLOBAL max_connections = {1 if on else 151}")
            if on:
                await self._end_app_sessions(
                    "SELECT id FROM information_schema.PROCESSLIST WHERE user = 'app'",
                    "KILL CONNECTION {}",
                )
        else:
            await self.admin_sql(f"ALTER ROLE app CONNECTION LIMIT {0 if on else -1}")
            if on:
                await self._end_app_sessions(
                    "SELECT pid FROM pg_stat_activity WHERE usename = 'app'",
                    "SELECT pg_terminate_backend({})",
                )

    async def _end_app_sessions(self, query: str, kill: str) -> None:
        async with self.admin.connect() as conn:
            ids = [row[0] for row in (await conn.exec_driver_sql(query)).all()]
            for session_id in ids:
                try:
                    await conn.exec_driver_sql(kill.format(int(session_id)))
                except Exception:  # already gone
                    pass


@pytest.fixture(params=["mariadb", "postgresql"])
async def outage_server(
    request: pytest.FixtureRequest, private_servers: PrivateServers
) -> AsyncIterator[OutageServer]:
    """A private server of each kind with an unprivileged application user ``app``."""
    kind: str = request.param
    if kind == "mariadb":
        server: PrivateMariaDB | PrivatePostgres = private_servers.mariadb()
        admin = create_async_engine(server.url, poolclass=NullPool)
        app_url = server.url.replace("root@", f"app:{APP_PASSWORD}@")
        setup = [
            f"CREATE USER 'app'@'%%' IDENTIFIED BY '{APP_PASSWORD}'",
            "GRANT ALL ON test.* TO 'app'@'%%'",
        ]
    else:
        server = private_servers.postgres()
        admin = create_async_engine(server.url, poolclass=NullPool)
        app_url = server.url.replace("postgres@", f"app:{APP_PASSWORD}@")
        setup = [
            f"CREATE ROLE app LOGIN PASSWORD '{APP_PASSWORD}'",
            "GRANT ALL ON SCHEMA public TO app",
        ]
    result = OutageServer(kind, server, admin, app_url)
    await until(_can_connect(admin), timeout=30)
    await result.admin_sql(*setup)
    try:
        yield result
    finally:
        server.resume()
        await admin.dispose()


def _can_connect(engine: AsyncEngine) -> Callable[[], Awaitable[bool]]:
    async def check() -> bool:
        try:
            async with engine.connect() as conn:
                await conn.exec_driver_sql("SELECT 1")
        except Exception:
            return False
        return True

    return check


async def _run_through_window(
    outage: OutageServer,
    redis: Redis,
    stream: str,
    reliability: Recorder,
    *,
    scenario: str,
    window: Callable[[bool], Awaitable[None]],
) -> None:
    engine = create_engine(outage.app_url, pool_size=4, max_overflow=0, connect_timeout=2)
    try:
        effects = await create_effects(engine, "effects")
        inbox = Inbox("inbox")
        await inbox.create_table(engine)
        keys = await publish_plain(redis, stream, 200)

        async def slow(message: QueueMessage[Any], session: DbSession) -> None:
            await asyncio.sleep(0.005)

        config = queue_config(
            stream, concurrency=4, max_deliveries=2, claim_min_idle_ms=300, claim_interval_ms=100
        )
        consumer = QueueConsumer(redis, config, inbox=inbox, registry=None)
        async with running(consumer, effect_handler(effects, slow), engine=engine) as task:

            async def busy() -> bool:
                return await effect_rows(engine, effects) >= 40

            await until(busy, timeout=60)
            await window(True)
            # The first backlog may be done by now: messages that arrive during the window
            # make sure the consumer meets the outage.
            keys += await publish_plain(redis, stream, 100)
            try:
                await until(lambda: consumer.statistics().database_outages > 0, timeout=10)
                await asyncio.sleep(WINDOW_SECONDS)
            finally:
                await window(False)
            counts = await wait_settled(redis, engine, stream, effects, keys, timeout=90)
            assert not task.done()
        stats = consumer.statistics()
        reliability.record(
            DELIVERY,
            f"{scenario} ({outage.kind}, {WINDOW_SECONDS:g} s, max_deliveries=2), inbox",
            **counts.row(faults=1, outages=stats.database_outages),
        )
        assert stats.database_outages > 0
        assert counts.dead_lettered_total == 0, counts  # no good message dead-lettered
        assert (counts.lost, counts.duplicated, counts.left_pending) == (0, 0, 0), counts
    finally:
        await engine.dispose()


async def test_read_only_window_spends_no_delivery(
    outage_server: OutageServer, redis: Redis, stream: str, reliability: Recorder
) -> None:
    """The server turns read-only for a few seconds mid-run (MariaDB read_only, PostgreSQL
    default_transaction_read_only: what a failover looks like): writes are refused, the
    consumer counts an outage and spends no delivery, and after the window every message
    is applied exactly once with none dead-lettered."""
    await _run_through_window(
        outage_server, redis, stream, reliability,
        scenario="read-only window", window=outage_server.read_only,
    )  # fmt: skip


async def test_too_many_connections_window_spends_no_delivery(
    outage_server: OutageServer, redis: Redis, stream: str, reliability: Recorder
) -> None:
    """The server refuses new connections for a few seconds ('too many connections') after
    the consumer's connections were ended: reconnects fail, the consumer counts an outage
    and spends no delivery, and afterwards every message is applied exactly once."""
    await _run_through_window(
        outage_server, redis, stream, reliability,
        scenario="too-many-connections window", window=outage_server.refuse_connections,
    )  # fmt: skip


async def test_hung_server_with_an_exhausted_pool_spends_no_delivery(
    outage_server: OutageServer, redis: Redis, stream: str, reliability: Recorder
) -> None:
    """Every pooled connection is held by a worker (pool size = concurrency) when the
    server hangs (SIGSTOP): handlers time out, the stuck sessions cannot be killed (the
    server does not answer even a new connection), so the messages are released without
    spending a delivery; after SIGCONT every message is applied exactly once."""
    outage = outage_server

    async def freeze(on: bool) -> None:
        if on:
            outage.server.pause()
        else:
            outage.server.resume()

    engine = create_engine(outage.app_url, pool_size=4, max_overflow=0, connect_timeout=1)
    try:
        effects = await create_effects(engine, "effects")
        inbox = Inbox("inbox")
        await inbox.create_table(engine)
        keys = await publish_plain(redis, stream, 150)

        async def slow(message: QueueMessage[Any], session: DbSession) -> None:
            await asyncio.sleep(0.005)

        config = queue_config(
            stream, concurrency=4, max_deliveries=2, handler_timeout=0.5,
            claim_min_idle_ms=1_000, claim_interval_ms=100,
        )  # fmt: skip
        consumer = QueueConsumer(redis, config, inbox=inbox, registry=None)
        async with running(consumer, effect_handler(effects, slow), engine=engine) as task:

            async def busy() -> bool:
                return await effect_rows(engine, effects) >= 30

            await until(busy, timeout=60)
            await freeze(True)
            keys += await publish_plain(redis, stream, 100)  # work for the frozen server
            try:
                await until(lambda: consumer.statistics().database_outages > 0, timeout=15)
                await asyncio.sleep(WINDOW_SECONDS)
            finally:
                await freeze(False)
            counts = await wait_settled(redis, engine, stream, effects, keys, timeout=90)
            assert not task.done()
        stats = consumer.statistics()
        reliability.record(
            DELIVERY,
            f"hung server, pool exhausted ({outage.kind}, SIGSTOP {WINDOW_SECONDS:g} s), inbox",
            **counts.row(faults=1, outages=stats.database_outages),
        )
        assert counts.dead_lettered_total == 0, counts
        assert (counts.lost, counts.duplicated, counts.left_pending) == (0, 0, 0), counts
    finally:
        await engine.dispose()
