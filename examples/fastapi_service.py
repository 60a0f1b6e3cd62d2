"""A FastAPI service and its worker: the endpoint moves money under row locks and
publishes an event through the transactional outbox; a relay in the app's lifespan moves
events to the stream; a worker with an inbox records each event exactly once. Other
endpoints use the Redis client and a producer through dependencies, and serve /metrics.

    uvicorn examples.fastapi_service:app      # the service (needs `pip install uvicorn`)
    python -m examples.fastapi_service        # self-test: 300 concurrent requests
"""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections.abc import AsyncIterator
from typing import Annotated, Any, cast

# --8<-- [start:imports]
import httpx
from fastapi import Depends, FastAPI, HTTPException, Response
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, generate_latest
from pydantic import BaseModel, Field
from sqlalchemy.ext.asyncio import AsyncEngine

from safesync_async import (
    DbSession,
    Inbox,
    Outbox,
    OutboxRelay,
    QueueConfig,
    QueueConsumer,
    QueueMessage,
    QueueProducer,
    RedisClient,
    RowLock,
    dead_letter_key,
    stream_health,
)
from safesync_async.fastapi import (
    RedisDep,
    SafeSync,
    SessionDep,
    install_exception_handlers,
    producer,
)

# --8<-- [end:imports]
from .settings import DATABASE_URL, REDIS_URL

STREAM = "example:transfer-events"
OUTBOX = Outbox("example_outbox")
INBOX = Inbox("example_inbox")
TABLES = ("example_wallets", "example_transfer_log", OUTBOX.name, INBOX.table.name)

# --8<-- [start:producer-dependency]
statement_requests = producer("example:statement-requests")
StatementRequests = Annotated[QueueProducer, Depends(statement_requests)]
# --8<-- [end:producer-dependency]


class TransferIn(BaseModel):
    source: int
    target: int
    amount: int = Field(gt=0)


async def create_tables(engine: AsyncEngine) -> None:
    await OUTBOX.create_table(engine)
    await INBOX.create_table(engine)
    async with DbSession(engine) as session:
        await session.execute(
            "CREATE TABLE IF NOT EXISTS example_wallets (id INT PRIMARY KEY, balance INT NOT NULL)"
        )
        await session.execute(
            "CREATE TABLE IF NOT EXISTS example_transfer_log (event_key VARCHAR(200) NOT NULL, "
            "amount INT NOT NULL)"
        )


# --8<-- [start:lifespan]
def build_app(safesync: SafeSync) -> FastAPI:
    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async with safesync.lifespan(app):
            await create_tables(safesync.engine)
            relay = OutboxRelay(safesync.engine, safesync.redis, OUTBOX, poll_interval=0.02)
            async with asyncio.TaskGroup() as tasks:
                tasks.create_task(relay.run())
                yield
                relay.stop()

    app = FastAPI(lifespan=lifespan)
    install_exception_handlers(app)
    # --8<-- [end:lifespan]

    # --8<-- [start:endpoint]
    @app.post("/transfers")
    async def transfer(body: TransferIn, session: SessionDep) -> dict[str, int]:
        """Move money between two wallets and announce it, atomically."""
        if body.source == body.target:
            raise HTTPException(422, "source and target must differ")
        wallets = {}
        for wallet in sorted((body.source, body.target)):  # one lock order: no deadlocks
            row = await RowLock(session, "example_wallets", {"id": wallet}).acquire()
            if row is None:
                raise HTTPException(404, f"wallet {wallet} not found")
            wallets[wallet] = row["balance"]
        if wallets[body.source] < body.amount:
            raise HTTPException(409, "insufficient funds")
        for wallet, delta in ((body.source, -body.amount), (body.target, body.amount)):
            await session.execute(
                "UPDATE example_wallets SET balance = balance + :d WHERE id = :id",
                {"d": delta, "id": wallet},
            )
        event = await OUTBOX.add(session, STREAM, body.model_dump())
        return {"event": event}  # the dependency commits before this is sent

    # --8<-- [end:endpoint]

    @app.get("/wallets/{wallet}")
    async def balance(wallet: int, session: SessionDep) -> dict[str, int]:
        row = await session.fetch_one(
            "SELECT balance FROM example_wallets WHERE id = :id", {"id": wallet}
        )
        if row is None:
            raise HTTPException(404, "no such wallet")
        return {"balance": row["balance"]}

    # --8<-- [start:redis]
    @app.get("/health")
    async def health(session: SessionDep, redis: RedisDep) -> dict[str, Any]:
        """Ready when the database and Redis answer; reports the event backlog."""
        await session.execute("SELECT 1")
        report = await stream_health(redis, STREAM)
        return {"events": report.length, "pending": sum(g.pending for g in report.groups)}

    # --8<-- [end:redis]

    # --8<-- [start:producer]
    @app.post("/wallets/{wallet}/statements", status_code=202)
    async def request_statement(wallet: int, requests: StatementRequests) -> dict[str, str]:
        """Ask for a statement, made later by a worker. Nothing is written to the
        database here, so the request goes straight to its stream."""
        entry = await requests.publish({"wallet": wallet})
        return {"request": entry}

    # --8<-- [end:producer]

    # --8<-- [start:metrics]
    @app.get("/metrics", include_in_schema=False)
    def metrics() -> Response:
        """What Prometheus scrapes: the library's metrics and the rest of the default
        registry (pass your registry to generate_latest if you use your own)."""
        return Response(generate_latest(REGISTRY), media_type=CONTENT_TYPE_LATEST)

    # --8<-- [end:metrics]

    return app


# --8<-- [start:worker]
async def run_worker(engine: AsyncEngine, redis: RedisClient) -> QueueConsumer:
    """The consuming side: one log row per event, whatever the redeliveries."""

    async def record(message: QueueMessage[Any], session: DbSession) -> None:
        await session.execute(
            "INSERT INTO example_transfer_log (event_key, amount) VALUES (:key, :amount)",
            {"key": message.idempotency_key, "amount": message.payload["amount"]},
        )

    config = QueueConfig(stream_key=STREAM, consumer_group="ledger", block_ms=100)
    consumer = QueueConsumer(redis, config, inbox=INBOX)
    await consumer.run_until_drained(record, engine=engine)
    return consumer


# --8<-- [end:worker]


# --8<-- [start:app]
app = build_app(SafeSync(DATABASE_URL, REDIS_URL))
# --8<-- [end:app]


async def main(requests: int = 300, wallets: int = 20) -> None:
    service = build_app(SafeSync(DATABASE_URL, REDIS_URL))
    async with service.router.lifespan_context(service):
        safesync: SafeSync = service.state.safesync
        engine, redis = safesync.engine, safesync.redis
        async with DbSession(engine) as session:
            await session.execute("DELETE FROM example_wallets")
            await session.execute("DELETE FROM example_transfer_log")
            await session.execute(f"DELETE FROM {OUTBOX.name}")
            for wallet in range(1, wallets + 1):
                await session.execute(
                    "INSERT INTO example_wallets VALUES (:id, 100)", {"id": wallet}
                )
        await redis.delete(STREAM)
        rng = random.Random(3)
        bodies = []
        for _ in range(requests):
            source, target = rng.sample(range(1, wallets + 1), 2)
            bodies.append({"source": source, "target": target, "amount": rng.randint(1, 60)})
        # --8<-- [start:client]
        transport = httpx.ASGITransport(app=service)
        async with httpx.AsyncClient(transport=transport, base_url="http://service") as client:
            replies = await asyncio.gather(*(client.post("/transfers", json=b) for b in bodies))
        # --8<-- [end:client]
        accepted = sum(r.status_code == 200 for r in replies)
        refused = sum(r.status_code == 409 for r in replies)
        assert accepted + refused == requests, {r.status_code for r in replies}
        while True:  # the relay publishes in the background
            if not (await OUTBOX.status(engine)).pending:
                break
            await asyncio.sleep(0.02)
        await run_worker(engine, redis)
        async with DbSession(engine) as session:
            total = await session.execute_scalar("SELECT SUM(balance) FROM example_wallets")
            logged = await session.execute_scalar("SELECT COUNT(*) FROM example_transfer_log")
        print(f"{accepted} transfers accepted, {refused} refused; {logged} events recorded once")
        assert total == wallets * 100  # money conserved
        assert logged == accepted  # every committed transfer announced exactly once
        await check_other_endpoints(service, redis)
        await redis.delete(STREAM, dead_letter_key(STREAM))
        await drop_tables(engine)


async def check_other_endpoints(service: FastAPI, redis: RedisClient) -> None:
    """/health through RedisDep, a statement request through the producer dependency,
    and /metrics, which holds the sessions of the requests above."""
    transport = httpx.ASGITransport(app=service)
    async with httpx.AsyncClient(transport=transport, base_url="http://service") as client:
        health = await client.get("/health")
        assert health.status_code == 200, health.text
        assert health.json()["pending"] == 0
        requested = await client.post("/wallets/3/statements")
        assert requested.status_code == 202, requested.text
        metrics = await client.get("/metrics")
    entries = cast(list[tuple[bytes, Any]], await redis.xrange("example:statement-requests"))
    assert requested.json() == {"request": entries[0][0].decode()}
    assert len(entries) == 1
    await redis.delete("example:statement-requests")
    assert metrics.headers["content-type"] == CONTENT_TYPE_LATEST
    assert 'safesync_db_transactions_total{operation="http",outcome="committed"}' in metrics.text


async def drop_tables(engine: AsyncEngine) -> None:
    """The example leaves nothing behind on the server."""
    async with DbSession(engine) as session:
        for table in TABLES:
            await session.execute(f"DROP TABLE IF EXISTS {table}")


if __name__ == "__main__":
    asyncio.run(main())
