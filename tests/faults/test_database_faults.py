"""The consumer (with an inbox) while the database fails under it: connections killed
server-side mid-transaction, COMMIT replies lost, a private MariaDB SIGKILLed and
restarted, and one frozen with SIGSTOP. Every message is applied exactly once."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import urlsplit

import pytest
from redis.asyncio import Redis
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine
from sqlalchemy.pool import NullPool

from safesync_async import (
    CommitOutcomeUnknownError,
    DbSession,
    Inbox,
    QueueConsumer,
    QueueMessage,
    create_engine,
)

from ..support.backends import MARIADB
from ..support.proxy import Action, TcpProxy
from ..support.reliability import Recorder
from ..support.servers import PrivateMariaDB
from ..support.settings import DATABASE_URL
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
TIMINGS = "Server-fault timings"


async def _until_failed(consumer: QueueConsumer, failed: int, *, timeout: float) -> float:
    """Seconds until the consumer counts a failure beyond ``failed``."""
    return await until(lambda: consumer.statistics().failed > failed, timeout=timeout)


@pytest.mark.parametrize(
    ("size", "every"),
    [pytest.param(300, 20, id="fast"), pytest.param(3_000, 10, id="long", marks=pytest.mark.slow)],
)
async def test_connection_killed_server_side_mid_handler(
    engine: AsyncEngine,
    redis: Redis,
    stream: str,
    effects: str,
    inbox: Inbox,
    reliability: Recorder,
    size: int,
    every: int,
) -> None:
    """KILL CONNECTION from another session in the middle of a handler's transaction (after
    its inbox row and effect were written): the transaction is rolled back, the message is
    retried, and with the inbox every message is applied exactly once; the pool is clean
    afterwards."""
    keys = await publish_plain(redis, stream, size)
    killer = create_async_engine(DATABASE_URL, poolclass=NullPool)
    killed: set[str] = set()

    async def handler(message: QueueMessage[Any], session: DbSession) -> None:
        await effect_handler(effects)(message, session)
        if message.payload["n"] % every == 0 and message.id not in killed:
            killed.add(message.id)
            victim = await session.execute_scalar("SELECT CONNECTION_ID()")
            async with killer.connect() as conn:
                await conn.exec_driver_sql(f"KILL CONNECTION {int(victim)}")
            await session.execute("SELECT 1")  # the connection is gone: this fails

    consumer = QueueConsumer(redis, queue_config(stream), inbox=inbox, registry=None)
    try:
        async with running(consumer, handler, engine=engine):
            counts = await wait_settled(redis, engine, stream, effects, keys)
    finally:
        await killer.dispose()
    pool = await MARIADB.pool_report(engine)
    stats = consumer.statistics()
    reliability.record(
        DELIVERY,
        "DB connection KILLed server-side mid-handler, inbox",
        **counts.row(
            faults=len(killed),
            retried=stats.failed,
            leaked_connections=pool.checked_out,
            open_transactions=pool.open_transactions,
        ),
    )
    assert len(killed) == size // every
    assert (counts.lost, counts.duplicated, counts.left_pending) == (0, 0, 0), counts
    assert counts.dead_lettered_total == 0  # the database failed, not the messages
    assert stats.failed >= len(killed)
    assert (pool.checked_out, pool.open_transactions) == (0, 0)


@pytest.mark.parametrize(
    ("size", "every"),
    [pytest.param(300, 25, id="fast"), pytest.param(3_000, 20, id="long", marks=pytest.mark.slow)],
)
@pytest.mark.parametrize("deferred", [False, True], ids=["execute", "deferred"])
async def test_commit_reply_lost(
    engine: AsyncEngine,
    redis: Redis,
    stream: str,
    effects: str,
    inbox: Inbox,
    reliability: Recorder,
    size: int,
    every: int,
    deferred: bool,
) -> None:
    """The COMMIT packet reaches the server but the connection is cut before the reply
    (proxy CUT_AFTER on the COMMIT, alone or after the deferred effect row it carries):
    the outcome is unknown, the message is not acked and is redelivered, and the inbox
    applies every message exactly once."""
    keys = await publish_plain(redis, stream, size)
    url = urlsplit(DATABASE_URL)
    async with TcpProxy(url.hostname or "127.0.0.1", url.port or 3306) as proxy:
        proxied = create_engine(
            DATABASE_URL.replace(f":{url.port}/", f":{proxy.port}/"), pool_size=10
        )

        write = effect_handler(effects, deferred=deferred)
        commit = b"\n;\nCOMMIT" if deferred else b"\x03COMMIT"

        async def handler(message: QueueMessage[Any], session: DbSession) -> None:
            await write(message, session)
            if message.payload["n"] % every == 0 and message.delivery_count == 1:
                proxy.add_trigger(commit, Action.CUT_AFTER)  # cuts the next COMMIT

        consumer = QueueConsumer(redis, queue_config(stream), inbox=inbox, registry=None)
        try:
            async with running(consumer, handler, engine=proxied):
                counts = await wait_settled(redis, engine, stream, effects, keys)
        finally:
            await proxied.dispose()
        cuts = sum(trigger.fired.is_set() for trigger in proxy.triggers)
    stats = consumer.statistics()
    reliability.record(
        DELIVERY,
        "COMMIT sent, reply lost (proxy cut), inbox"
        + (", effect deferred (sent with the COMMIT)" if deferred else ""),
        **counts.row(
            faults=cuts,
            outcome_unknown=stats.failed,
            committed_anyway_skipped_by_inbox=stats.duplicates,
        ),
    )
    assert cuts >= size // every - 1  # a trigger armed by the last messages may not fire
    assert (counts.lost, counts.duplicated, counts.left_pending) == (0, 0, 0), counts
    assert counts.dead_lettered_total == 0


@pytest.fixture
async def private_db(
    private_servers: PrivateServers,
) -> AsyncIterator[tuple[PrivateMariaDB, AsyncEngine]]:
    """A private MariaDB (that the test may kill or freeze) and an engine on it."""
    server = private_servers.mariadb()
    engine = create_engine(server.url, pool_size=10, connect_timeout=2)
    try:
        yield server, engine
    finally:
        server.resume()
        await engine.dispose()


@pytest.mark.parametrize(
    ("size", "kills"),
    [pytest.param(600, 1, id="fast"), pytest.param(4_000, 4, id="long", marks=pytest.mark.slow)],
)
async def test_mariadb_killed_and_restarted(
    redis: Redis,
    stream: str,
    private_db: tuple[PrivateMariaDB, AsyncEngine],
    reliability: Recorder,
    size: int,
    kills: int,
) -> None:
    """The database server is SIGKILLed mid-run and restarted: in-flight transactions roll
    back or commit with an unknown outcome, the consumer backs off and retries, and with
    the inbox every message is applied exactly once, nothing is left pending, and the
    consumer is still running."""
    server, engine = private_db
    effects = await create_effects(engine, "effects")
    inbox = Inbox("inbox")
    await inbox.create_table(engine)
    keys = await publish_plain(redis, stream, size)

    async def slow(message: QueueMessage[Any], session: DbSession) -> None:
        await asyncio.sleep(0.002)

    consumer = QueueConsumer(redis, queue_config(stream), inbox=inbox, registry=None)
    loop = asyncio.get_running_loop()
    detections: list[float] = []
    recoveries: list[float] = []
    async with running(consumer, effect_handler(effects, slow), engine=engine) as task:
        for kill in range(kills):
            target = (kill + 1) * size // (kills + 2)

            async def busy(target: int = target) -> bool:
                return await effect_rows(engine, effects) >= target

            await until(busy, timeout=60)
            failed = consumer.statistics().failed
            server.kill()
            detections.append(await _until_failed(consumer, failed, timeout=30))
            await asyncio.sleep(0.5)
            server.start()
            restarted_at = loop.time()
            rows = await effect_rows(engine, effects)

            async def progressing(rows: int = rows) -> bool:
                return await effect_rows(engine, effects) > rows

            await until(progressing, timeout=60)
            recoveries.append(loop.time() - restarted_at)
        counts = await wait_settled(redis, engine, stream, effects, keys)
        assert not task.done()
    stats = consumer.statistics()
    reliability.record(
        DELIVERY,
        "MariaDB SIGKILL + restart mid-run, inbox",
        **counts.row(
            faults=kills,
            failed_attempts=stats.failed,
            committed_anyway_skipped_by_inbox=stats.duplicates,
        ),
    )
    reliability.record(
        TIMINGS,
        "MariaDB SIGKILL: first failed message; restart to next message applied",
        detection_s=max(detections),
        recovery_s=max(recoveries),
        restarts=kills,
    )
    assert (counts.lost, counts.duplicated, counts.left_pending) == (0, 0, 0), counts
    assert counts.dead_lettered_total == 0


@pytest.mark.parametrize(
    "patience",
    [pytest.param(1.0, id="fast"), pytest.param(60.0, id="measured", marks=pytest.mark.slow)],
)
async def test_hung_mariadb_detected_by_handler_timeout(
    redis: Redis,
    stream: str,
    private_db: tuple[PrivateMariaDB, AsyncEngine],
    reliability: Recorder,
    patience: float,
) -> None:
    """A database frozen with SIGSTOP: handlers stuck in it are reported failed within
    handler_timeout plus the engine's connect timeout, nothing commits meanwhile, and after
    SIGCONT every message is applied exactly once. (``patience``: how long past the bound
    the test keeps the server frozen to measure the actual detection time.)"""
    server, engine = private_db
    handler_timeout = 1.5
    connect_timeout = 2.0
    bound = handler_timeout + connect_timeout + 1.0
    effects = await create_effects(engine, "effects")
    inbox = Inbox("inbox")
    await inbox.create_table(engine)
    keys = await publish_plain(redis, stream, 300)

    async def slow(message: QueueMessage[Any], session: DbSession) -> None:
        await asyncio.sleep(0.01)

    config = queue_config(
        stream, concurrency=4, handler_timeout=handler_timeout, claim_min_idle_ms=3_000
    )
    consumer = QueueConsumer(redis, config, inbox=inbox, registry=None)
    loop = asyncio.get_running_loop()
    detection: float | None = None
    async with running(consumer, effect_handler(effects, slow), engine=engine) as task:

        async def busy() -> bool:
            return await effect_rows(engine, effects) >= 30

        await until(busy, timeout=60)
        failed = consumer.statistics().failed
        server.pause()
        try:
            detection = await _until_failed(consumer, failed, timeout=bound + patience)
        except TimeoutError:
            pass  # not detected in time: recorded as such, asserted below
        finally:
            server.resume()
        resumed_at = loop.time()
        rows = await effect_rows(engine, effects)

        async def progressing() -> bool:
            return await effect_rows(engine, effects) > rows

        await until(progressing, timeout=60)
        recovery = loop.time() - resumed_at
        counts = await wait_settled(redis, engine, stream, effects, keys)
        assert not task.done()
    reliability.record(
        DELIVERY,
        "MariaDB SIGSTOP (hung server) mid-run, handler_timeout, inbox",
        **counts.row(faults=1, failed_attempts=consumer.statistics().failed),
    )
    timing: dict[str, float | str] = {"bound_s": bound, "recovery_s": recovery}
    if detection is not None:
        timing["detection_s"] = detection
    else:
        timing["not_detected_after_s"] = bound + patience
    reliability.record(
        TIMINGS,
        f"MariaDB SIGSTOP: first handler reported failed (handler_timeout {handler_timeout:g} "
        f"s, connect timeout {connect_timeout:g} s); SIGCONT to next message applied",
        **timing,
    )
    assert detection is not None and detection <= bound
    assert counts.dead_lettered_total == 0  # the database failed, not the messages
    assert (counts.lost, counts.duplicated, counts.left_pending) == (0, 0, 0), counts


async def test_hung_commit_bounded_by_cleanup_timeout(
    private_db: tuple[PrivateMariaDB, AsyncEngine], reliability: Recorder
) -> None:
    """A DbSession whose server freezes just before COMMIT raises CommitOutcomeUnknownError
    within cleanup_timeout plus the bounded attempt to kill its server session, and the
    engine serves new sessions once the server resumes."""
    server, engine = private_db
    cleanup_timeout = 1.0
    async with DbSession(engine, registry=None) as session:
        await session.execute("CREATE TABLE hung (id INT PRIMARY KEY)")
    loop = asyncio.get_running_loop()
    with pytest.raises(CommitOutcomeUnknownError):
        async with DbSession(engine, cleanup_timeout=cleanup_timeout, registry=None) as session:
            await session.execute("INSERT INTO hung VALUES (1)")
            server.pause()
            started = loop.time()
    detection = loop.time() - started
    server.resume()
    resumed_at = loop.time()
    async with DbSession(engine, registry=None) as session:
        committed = int(await session.execute_scalar("SELECT COUNT(*) FROM hung"))
    recovery = loop.time() - resumed_at
    bound = 2 * cleanup_timeout + 1.0  # COMMIT, then the bounded kill of its session
    reliability.record(
        TIMINGS,
        f"MariaDB SIGSTOP before COMMIT: CommitOutcomeUnknownError (cleanup_timeout "
        f"{cleanup_timeout:g} s); SIGCONT to next session",
        bound_s=bound,
        detection_s=detection,
        recovery_s=recovery,
        committed_after_resume=bool(committed),
    )
    assert detection <= bound
