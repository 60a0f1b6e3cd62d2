"""OpenTelemetry: publish and process spans follow the messaging conventions, trace context
travels in the entry, and the process span links to the publishing span."""

from __future__ import annotations

import os
import subprocess
import sys
from typing import Any

import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from sqlalchemy.ext.asyncio import AsyncEngine

from safesync_async import DbSession, QueueMessage, QueueProducer, RowLock, tracing
from safesync_async.testing import StreamFixture

from .conftest import TableFactory

_EXPORTER = InMemorySpanExporter()


@pytest.fixture(scope="module", autouse=True)
def _provider() -> None:
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(_EXPORTER))
    trace.set_tracer_provider(provider)


@pytest.fixture(autouse=True)
def _clear() -> None:
    _EXPORTER.clear()


async def test_process_span_links_to_the_publisher(
    engine: AsyncEngine, make_table: TableFactory, safesync_stream: StreamFixture
) -> None:
    """A message published inside a span carries its traceparent; the consumer's process
    span has the messaging attributes and a link to that span's context; the row lock
    taken in the handler has its own span."""
    assert tracing.ENABLED
    table = await make_table("CREATE TABLE {table} (id INT PRIMARY KEY)")
    async with DbSession(engine) as s:
        await s.execute(f"INSERT INTO {table} VALUES (1)")
    tracer = trace.get_tracer("test")
    with tracer.start_as_current_span("endpoint") as parent:
        entry_id = await safesync_stream.producer.publish({"order": 1})
    producer_context = parent.get_span_context()
    entries: Any = await safesync_stream.redis.xrange(safesync_stream.key)
    [(_, fields)] = entries
    assert fields[b"traceparent"].decode().split("-")[1] == f"{producer_context.trace_id:032x}"

    async def handler(message: QueueMessage[Any], session: DbSession) -> None:
        await RowLock(session, table, {"id": 1}).acquire()

    await safesync_stream.drain(handler, engine=engine)
    spans = {span.name: span for span in _EXPORTER.get_finished_spans()}
    publish = spans[f"publish {safesync_stream.key}"]
    assert publish.kind is trace.SpanKind.PRODUCER
    assert publish.parent is not None and publish.parent.span_id == producer_context.span_id
    process = spans[f"process {safesync_stream.key}"]
    assert process.kind is trace.SpanKind.CONSUMER
    assert process.attributes is not None
    assert process.attributes["messaging.system"] == "redis"
    assert process.attributes["messaging.operation.type"] == "process"
    assert process.attributes["messaging.destination.name"] == safesync_stream.key
    assert process.attributes["messaging.consumer.group.name"] == safesync_stream.group
    assert process.attributes["messaging.message.id"] == entry_id
    [link] = process.links
    assert link.context.trace_id == producer_context.trace_id
    lock = spans[f"lock row {table}"]
    assert lock.parent is not None and lock.parent.span_id == process.context.span_id
    assert f"ack {safesync_stream.key}" in spans
    assert f"receive {safesync_stream.key}" in spans


async def test_trace_context_can_be_left_out(safesync_stream: StreamFixture) -> None:
    """With trace_context=False an entry has exactly the field 'data' (what the
    synchronous library's strict parser accepts), even with tracing active."""
    producer = QueueProducer(safesync_stream.redis, safesync_stream.key, trace_context=False)
    await producer.publish({"order": 2})
    entries: Any = await safesync_stream.redis.xrange(safesync_stream.key)
    [(_, fields)] = entries
    assert set(fields) == {b"data"}


async def test_a_callers_trace_context_header_is_kept(safesync_stream: StreamFixture) -> None:
    """A traceparent given as a header is published as given, not replaced by the span
    that is current when publishing."""
    given = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    with trace.get_tracer("test").start_as_current_span("endpoint"):
        await safesync_stream.producer.publish({"n": 1}, headers={"traceparent": given})
    entries: Any = await safesync_stream.redis.xrange(safesync_stream.key)
    [(_, fields)] = entries
    assert fields[b"traceparent"] == given.encode()


def test_no_spans_until_a_tracer_provider_is_set() -> None:
    """With the API installed but no provider configured, tracing stays off (spans nobody
    records are not made); setting a provider turns it on. In a fresh interpreter, since
    a provider can be set only once per process."""
    code = (
        "from opentelemetry import trace\n"
        "from opentelemetry.sdk.trace import TracerProvider\n"
        "from safesync_async import tracing\n"
        "before = tracing.active()\n"
        "with tracing.messaging_span('publish', 's') as span:\n"
        "    made = span is not None\n"
        "trace.set_tracer_provider(TracerProvider())\n"
        "print(before, made, tracing.active())\n"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=False, env=env
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["False", "False", "True"]
