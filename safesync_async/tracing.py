"""Optional OpenTelemetry spans (extra ``otel``), following the messaging and database
semantic conventions.

Without ``opentelemetry-api`` installed, or while the application has configured no
tracer provider, every helper here is a no-op costing a check or two. Otherwise spans go
to the application's tracer provider. Trace context travels in the entry's fields
(``traceparent``/``tracestate``), so a consumer's *process* span links to the span that
published the message (or that added it to the outbox).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Mapping
from typing import Any

try:
    from opentelemetry import propagate, trace
    from opentelemetry.trace import Link, SpanKind
except ImportError:  # the extra is not installed
    ENABLED = False
else:
    ENABLED = True

__all__ = [
    "ENABLED",
    "active",
    "inject_context",
    "lock_span",
    "message_span",
    "messaging_span",
]

_UNKNOWN = object()
_PROVIDER_FROM_ENV = "OTEL_PYTHON_TRACER_PROVIDER" in os.environ
_SYSTEM = "redis"
_CARRIER_FIELDS = (b"traceparent", b"tracestate")
_OPERATION_TYPES = {
    "publish": "send",
    "receive": "receive",
    "process": "process",
    "ack": "settle",
    "claim": "receive",
    "dead_letter": "settle",
}


def active() -> bool:
    """Whether spans are worth making: the API is installed and the application set a
    tracer provider (until then OpenTelemetry would hand out non-recording spans, at a
    cost per message for nothing)."""
    if not ENABLED:
        return False
    # Fast path for the common "nothing configured" case: the API's global is still
    # unset and no provider is named in the environment (get_tracer_provider() would
    # look the environment up on every call).
    if getattr(trace, "_TRACER_PROVIDER", _UNKNOWN) is None and not _PROVIDER_FROM_ENV:
        return False
    provider = trace.get_tracer_provider()
    return not isinstance(provider, trace.ProxyTracerProvider | trace.NoOpTracerProvider)


def _tracer() -> Any:
    from . import __version__

    return trace.get_tracer("safesync_async", __version__)


def inject_context(fields: dict[bytes, bytes]) -> None:
    """Add the current span's W3C trace context to entry fields (when a span is active and
    the fields do not carry a trace context already, e.g. from the caller's headers)."""
    if not ENABLED or _CARRIER_FIELDS[0] in fields:
        return
    if not trace.get_current_span().get_span_context().is_valid:
        return
    carrier: dict[str, str] = {}
    propagate.inject(carrier)
    for key, value in carrier.items():
        fields[key.encode()] = value.encode()


def _links(fields: Mapping[bytes, bytes]) -> list[Any]:
    carrier = {k.decode(): v.decode("latin-1") for k, v in fields.items() if k in _CARRIER_FIELDS}
    if not carrier:
        return []
    span_context = trace.get_current_span(propagate.extract(carrier)).get_span_context()
    return [Link(span_context)] if span_context.is_valid else []


@contextlib.contextmanager
def messaging_span(
    operation: str,
    stream: str,
    *,
    group: str | None = None,
    count: int | None = None,
    attributes: Mapping[str, Any] | None = None,
) -> Iterator[Any]:
    """A span for a stream operation: publish, receive, ack, claim, dead_letter."""
    if not active():
        yield None
        return
    attrs: dict[str, Any] = {
        "messaging.system": _SYSTEM,
        "messaging.operation.name": operation,
        "messaging.operation.type": _OPERATION_TYPES[operation],
        "messaging.destination.name": stream,
    }
    if group is not None:
        attrs["messaging.consumer.group.name"] = group
    if count is not None:
        attrs["messaging.batch.message_count"] = count
    attrs.update(attributes or {})
    kind = SpanKind.PRODUCER if operation == "publish" else SpanKind.CLIENT
    with _tracer().start_as_current_span(
        f"{operation} {stream}", kind=kind, attributes=attrs
    ) as span:
        yield span


@contextlib.contextmanager
def message_span(
    stream: str, group: str, message_id: str, fields: Mapping[bytes, bytes], delivery: int
) -> Iterator[Any]:
    """The *process* span of one message, linked to the context that published it."""
    if not active():
        yield None
        return
    attrs = {
        "messaging.system": _SYSTEM,
        "messaging.operation.name": "process",
        "messaging.operation.type": "process",
        "messaging.destination.name": stream,
        "messaging.consumer.group.name": group,
        "messaging.message.id": message_id,
        "messaging.message.delivery_count": delivery,
    }
    with _tracer().start_as_current_span(
        f"process {stream}", kind=SpanKind.CONSUMER, attributes=attrs, links=_links(fields)
    ) as span:
        yield span


_NO_SPAN: contextlib.nullcontext[None] = contextlib.nullcontext()


def lock_span(kind: str, target: str, db_system: str) -> contextlib.AbstractContextManager[Any]:
    """A span around a lock acquisition (row lock on a table, or a named lock); nothing,
    at no cost, while tracing is not active."""
    if not active():
        return _NO_SPAN
    return _lock_span(kind, target, db_system)


@contextlib.contextmanager
def _lock_span(kind: str, target: str, db_system: str) -> Iterator[Any]:
    attrs = {
        "db.system.name": db_system,
        "db.operation.name": "SELECT FOR UPDATE" if kind == "row" else "GET_LOCK",
        "safesync.lock.kind": kind,
        "safesync.lock.target": target,
    }
    with _tracer().start_as_current_span(
        f"lock {kind} {target}", kind=SpanKind.CLIENT, attributes=attrs
    ) as span:
        yield span
