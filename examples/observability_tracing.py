"""OpenTelemetry tracing: install a tracer provider at start-up and the library's spans
(publish, receive, process, ack, lock) go to it, the consumer's process span linked to
the span that published the message.

A tracer provider can be installed once per process, so main() runs the traced part in
a child process (``python -m examples.observability_tracing --child``) and checks the
span names it reports.
"""

from __future__ import annotations

import asyncio
import sys
import uuid
from pathlib import Path
from typing import Any

from opentelemetry import trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from safesync_async import (
    DbSession,
    QueueConfig,
    QueueConsumer,
    QueueMessage,
    QueueProducer,
    RowLock,
    create_redis_client,
)

from .settings import REDIS_URL, make_engine

REPOSITORY = Path(__file__).resolve().parent.parent


# --8<-- [start:setup]
def configure_tracing(exporter: SpanExporter) -> TracerProvider:
    """Once, at start-up: the library creates its spans through the global provider."""
    provider = TracerProvider(resource=Resource.create({"service.name": "orders-worker"}))
    provider.add_span_processor(BatchSpanProcessor(exporter))  # e.g. OTLPSpanExporter()
    trace.set_tracer_provider(provider)
    return provider


# --8<-- [end:setup]


async def traced_round_trip() -> list[str]:
    """Publish inside a span, consume with a handler that takes a row lock; return the
    names of the spans recorded."""
    exporter = InMemorySpanExporter()
    provider = configure_tracing(exporter)
    engine = make_engine()
    redis = create_redis_client(REDIS_URL, block_ms=100)
    stream = f"example:traced:{uuid.uuid4().hex[:8]}"
    try:
        async with DbSession(engine) as session:
            await session.execute(
                "CREATE TABLE IF NOT EXISTS example_traced (id INT PRIMARY KEY, n INT NOT NULL)"
            )
            await session.execute("REPLACE INTO example_traced VALUES (1, 0)")

        # --8<-- [start:spans]
        tracer = trace.get_tracer("checkout")
        with tracer.start_as_current_span("POST /orders"):  # e.g. your web framework's span
            await QueueProducer(redis, stream).publish({"id": 1})  # carries its traceparent

        async def handle(msg: QueueMessage[Any], session: DbSession) -> None:
            await RowLock(session, "example_traced", {"id": msg.payload["id"]}).acquire()
            await session.execute("UPDATE example_traced SET n = n + 1 WHERE id = 1")

        config = QueueConfig(stream_key=stream, consumer_group="traced", block_ms=100)
        await QueueConsumer(redis, config).run_until_drained(handle, engine=engine)
        # --8<-- [end:spans]
        provider.force_flush()
        spans = exporter.get_finished_spans()
        process = next(s for s in spans if s.name == f"process {stream}")
        [link] = process.links  # the consumer's span links to the publishing context
        assert any(s.context.trace_id == link.context.trace_id for s in spans)
        return sorted({s.name.replace(stream, "<stream>") for s in spans})
    finally:
        async with DbSession(engine) as session:
            await session.execute("DROP TABLE example_traced")
        await redis.delete(stream)
        await redis.aclose()
        await engine.dispose()
        provider.shutdown()


async def main() -> None:
    child = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "examples.observability_tracing",
        "--child",
        cwd=REPOSITORY,
        stdout=asyncio.subprocess.PIPE,
    )
    output, _ = await child.communicate()
    assert child.returncode == 0, output
    names = output.decode().splitlines()
    print("spans:", ", ".join(names))
    assert {
        "POST /orders",
        "publish <stream>",
        "receive <stream>",
        "process <stream>",
        "lock row example_traced",
        "ack <stream>",
    } <= set(names)


if __name__ == "__main__":
    if sys.argv[1:] == ["--child"]:
        print("\n".join(asyncio.run(traced_round_trip())))
    else:
        asyncio.run(main())
