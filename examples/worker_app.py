"""A worker for the ``safesync worker`` runner: the declarative app and its handler.

    safesync worker examples.worker_app:worker --workers 2 --http-port 9100

runs two processes that record payments in the database, each payment once (the inbox),
with Prometheus metrics summed over both processes and health answers on port 9100.

``python -m examples.worker_app`` (and CI) runs the whole story: it publishes 50
payments, starts the command above as a subprocess, waits until the metrics endpoint
counts 50 acked messages, stops the runner with SIGTERM the way an orchestrator does,
and checks that it exited 0 with every payment recorded once and nothing left pending.
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import sys
import urllib.request
import uuid
from typing import Any

from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy.ext.asyncio import AsyncEngine

from safesync_async import (
    DbSession,
    Inbox,
    QueueMessage,
    QueueProducer,
    WorkerApp,
    create_engine,
    create_redis_client,
    dead_letter_key,
)

from .settings import DATABASE_URL, REDIS_URL

# --8<-- [start:app]
INBOX = Inbox("example_worker_inbox")

worker = WorkerApp(
    stream="example:worker-payments",
    group="ledger",
    inbox=INBOX,  # a redelivered payment is recorded once
    concurrency=8,  # handlers at once, in each process
    queue_options={"max_deliveries": 5, "claim_min_idle_ms": 10_000},
)  # the URLs come from SAFESYNC_DATABASE_URL and SAFESYNC_REDIS_URL


@worker.handler
async def record_payment(msg: QueueMessage[Any], session: DbSession) -> None:
    """Runs inside a transaction; the entry is acked only after that transaction commits."""
    await session.execute(
        "INSERT INTO example_worker_payments (payment_id, amount) VALUES (:id, :amount)",
        {"id": msg.payload["payment_id"], "amount": msg.payload["amount"]},
    )


# --8<-- [end:app]


async def recorded(engine: AsyncEngine) -> int:
    async with DbSession(engine) as session:
        return int(await session.execute_scalar("SELECT COUNT(*) FROM example_worker_payments"))


def acked_messages(port: int, stream: str) -> float:
    """``safesync_queue_messages_total{outcome="acked"}`` of ``stream`` on the endpoint."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        text = response.read().decode()
    return sum(
        sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == "safesync_queue_messages_total"
        and sample.labels.get("stream") == stream
        and sample.labels.get("outcome") == "acked"
    )


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


async def main() -> None:
    stream = f"example:worker-payments:{uuid.uuid4().hex[:8]}"
    engine = create_engine(DATABASE_URL, pool_size=1)
    redis = create_redis_client(REDIS_URL)
    port = free_port()
    try:
        async with DbSession(engine) as session:
            await session.execute(
                "CREATE TABLE IF NOT EXISTS example_worker_payments "
                "(payment_id INT PRIMARY KEY, amount INT NOT NULL)"
            )
            await session.execute("DELETE FROM example_worker_payments")
        await INBOX.create_table(engine)
        producer = QueueProducer(redis, stream)
        await producer.publish_batch({"payment_id": i, "amount": 10 * i} for i in range(1, 51))
        runner = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "safesync_async.cli", "worker", "examples.worker_app:worker",
            "--workers", "2", "--http-port", str(port),
            "--stream", stream,  # an option wins over the app's stream="..."
            env={**os.environ, "SAFESYNC_DATABASE_URL": DATABASE_URL,
                 "SAFESYNC_REDIS_URL": REDIS_URL},
        )  # fmt: skip
        try:
            async with asyncio.timeout(60):
                while await asyncio.to_thread(_acked_or_zero, port, stream) < 50:  # noqa: ASYNC110
                    await asyncio.sleep(0.1)
            acked = await asyncio.to_thread(acked_messages, port, stream)
            runner.send_signal(signal.SIGTERM)  # what an orchestrator does
            async with asyncio.timeout(60):
                code = await runner.wait()
        finally:
            if runner.returncode is None:
                runner.kill()
                await runner.wait()
        pending = (await redis.xpending(stream, "ledger"))["pending"]
        count = await recorded(engine)
        print(
            f"runner exited {code}; {count} payments recorded, {acked:g} acked over both "
            f"processes, {pending} pending"
        )
        assert code == 0
        assert count == 50
        assert acked == 50
        assert pending == 0
    finally:
        async with DbSession(engine) as session:
            await session.execute("DROP TABLE IF EXISTS example_worker_payments")
            await session.execute("DROP TABLE IF EXISTS example_worker_inbox")
        await redis.delete(stream, dead_letter_key(stream))
        await redis.aclose()
        await engine.dispose()


def _acked_or_zero(port: int, stream: str) -> float:
    """Like :func:`acked_messages`, but 0 while the endpoint is not listening yet."""
    try:
        return acked_messages(port, stream)
    except OSError:
        return 0.0


if __name__ == "__main__":
    asyncio.run(main())
