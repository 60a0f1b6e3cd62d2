"""QueueProducer: add entries to a stream (one, or many pipelined) and trim it safely."""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from .. import tracing
from .._validation import check_int
from ..errors import ConfigurationError, UnsafeOperationError
from ..metrics import DEFAULT_REGISTRY, RegistryArg, metrics_for
from ._errors import redis_errors
from ._publishing import ReplicationWait, add_entries
from ._streams import read_groups, text
from .client import RedisClient
from .codec import Codec, JsonCodec
from .models import IDEMPOTENCY_KEY_FIELD, ORDERING_KEY_FIELD, ordering_key_bytes

__all__ = ["QueueProducer", "safe_trim_boundary"]

_log = logging.getLogger("safesync_async.queue.producer")
_PAGE = 1_000


class QueueProducer:
    """Publishes payloads to ``stream_key`` with a codec (JSON in field ``data`` by default,
    readable by the seed library's consumers).

    Trimming is explicit and safe: :meth:`trim` never removes an entry that some consumer
    group has not acknowledged yet (pending, or not delivered at all).

    With OpenTelemetry active, entries carry the publishing span's trace context
    (``traceparent``); pass ``trace_context=False`` to keep entries to the single ``data``
    field the synchronous library's strict parser accepts.

    ``wait_replicas`` (default 0: off) makes every publication wait until that many
    replicas of the stream's master acknowledged it (Redis ``WAIT``, on the connection of
    the XADD, at most ``wait_timeout_ms``), and raise :class:`ReplicationError` when
    fewer did: a failover of a master that acknowledged an XADD it had not replicated
    yet loses the entry, and the wait closes that window (at the price of a replication
    round trip; see the Scaling out page for figures). ``redis`` is a standalone or a
    Redis Cluster client.
    """

    def __init__(
        self,
        redis: RedisClient,
        stream_key: str,
        *,
        codec: Codec[Any] | None = None,
        trace_context: bool = True,
        wait_replicas: int = 0,
        wait_timeout_ms: int = 1_000,
        registry: RegistryArg = DEFAULT_REGISTRY,
    ) -> None:
        if not isinstance(stream_key, str) or not stream_key:
            raise ConfigurationError("stream_key must be a non-empty string")
        self._wait = ReplicationWait.of(wait_replicas, wait_timeout_ms)
        if self._wait is not None:
            self._wait.check_client(redis)
        self.redis = redis
        self.stream_key = stream_key
        self._trace_context = trace_context
        self._codec: Codec[Any] = codec if codec is not None else JsonCodec()
        self._metrics = metrics_for(registry)
        self._stream_label = self._metrics.stream_label(stream_key)

    def fields_for(
        self,
        payload: Any,
        *,
        idempotency_key: str | None = None,
        headers: Mapping[str, str] | None = None,
        key: str | bytes | None = None,
    ) -> dict[bytes, bytes]:
        """The entry fields for ``payload``: codec output, idempotency key, ordering key,
        extra headers."""
        fields = self._codec.encode(payload)
        if key is not None:
            fields[ORDERING_KEY_FIELD] = _ordering_key(key)
        if idempotency_key is not None:
            if not idempotency_key:
                raise ConfigurationError(
                    "idempotency_key must not be empty (an empty key would deduplicate "
                    "nothing: consumers fall back to the entry id); pass None for no key"
                )
            fields[IDEMPOTENCY_KEY_FIELD] = idempotency_key.encode("utf-8", "surrogateescape")
        for name, value in (headers or {}).items():
            field = name.encode("utf-8")
            if field in fields:
                raise ConfigurationError(f"header {name!r} collides with a payload field")
            fields[field] = value.encode("utf-8")
        if self._trace_context:
            tracing.inject_context(fields)
        return fields

    async def publish(
        self,
        payload: Any,
        *,
        idempotency_key: str | None = None,
        headers: Mapping[str, str] | None = None,
        key: str | bytes | None = None,
    ) -> str:
        """Add one entry; returns its id. ``key`` is its ordering key (entry field
        ``ordering_key``): consumers with ``ordering="key"`` handle the entries of one
        key one at a time, in stream order. With ``wait_replicas``,
        :class:`ReplicationError` if too few replicas acknowledged it in time (it was
        added, though)."""
        with tracing.messaging_span("publish", self.stream_key, count=1):
            fields = self.fields_for(
                payload, idempotency_key=idempotency_key, headers=headers, key=key
            )
            [entry_id] = await self._add([fields], "XADD")
        return entry_id

    async def publish_batch(
        self,
        payloads: Iterable[Any],
        *,
        chunk_size: int = 500,
        keys: Sequence[str | bytes | None] | None = None,
    ) -> list[str]:
        """Add many entries with pipelined XADDs (one round trip per ``chunk_size``);
        returns their ids in order. ``keys``: one ordering key (or None) per payload.
        Not atomic: on an error, the ids added so far are lost to the caller, so give
        entries idempotency keys if you may retry. With ``wait_replicas`` each chunk
        waits once, and a :class:`ReplicationError` carries the ids of its chunk."""
        check_int("chunk_size", chunk_size, minimum=1)
        pairs: Iterable[tuple[Any, str | bytes | None]]
        if keys is None:
            pairs = ((payload, None) for payload in payloads)
        else:
            payloads = list(payloads)
            if len(payloads) != len(keys):
                raise ConfigurationError(
                    f"publish_batch got {len(payloads)} payloads and {len(keys)} keys; "
                    "pass one key (or None) per payload"
                )
            pairs = zip(payloads, keys, strict=True)
        ids: list[str] = []
        chunk: list[tuple[Any, str | bytes | None]] = []
        for pair in pairs:
            chunk.append(pair)
            if len(chunk) >= chunk_size:
                ids.extend(await self._publish_chunk(chunk))
                chunk = []
        if chunk:
            ids.extend(await self._publish_chunk(chunk))
        return ids

    async def _publish_chunk(self, chunk: list[tuple[Any, str | bytes | None]]) -> list[str]:
        with tracing.messaging_span("publish", self.stream_key, count=len(chunk)):
            return await self._add_many([self.fields_for(p, key=k) for p, k in chunk])

    async def add_fields(self, entries: Iterable[Mapping[bytes, bytes]]) -> list[str]:
        """Add ready-made field maps (e.g. replayed dead letters), pipelined."""
        return await self._add_many([dict(e) for e in entries])

    async def _add_many(self, entries: list[dict[bytes, bytes]]) -> list[str]:
        return await self._add(entries, "XADD (pipelined)")

    async def _add(self, entries: list[dict[bytes, bytes]], operation: str) -> list[str]:
        if not entries:
            return []
        stream = self.stream_key
        ids = await add_entries(
            self.redis,
            [(stream, fields) for fields in entries],
            wait=self._wait,
            operation=operation,
            stream=stream,
        )
        self._metrics.inc("published", self._stream_label, amount=len(ids))
        return ids

    async def trim(self, max_length: int, *, strict: bool = False) -> int:
        """Remove the oldest entries beyond ``max_length``, but only entries every group
        has acknowledged; returns how many were removed.

        When some of those entries are still pending or undelivered, the trim stops
        short of them (and logs it); with ``strict=True`` it raises
        :class:`UnsafeOperationError` instead and removes nothing. Call it periodically:
        it reads the ids it is about to drop, which is cheap for routine trims.
        """
        check_int("max_length", max_length, minimum=0)
        with redis_errors("XLEN", self.stream_key):
            length = int(await self.redis.xlen(self.stream_key))
        excess = length - max_length
        if excess <= 0:
            return 0
        cut = await self._id_after_oldest(excess)  # first entry a plain MAXLEN trim keeps
        if cut is None:
            return 0
        safe = await safe_trim_boundary(self.redis, self.stream_key)
        boundary = cut
        if safe is not None and _id_key(safe) < _id_key(cut):
            if strict:
                raise UnsafeOperationError(
                    f"trimming {self.stream_key!r} to {max_length} entries would drop entries "
                    f"not yet acknowledged (oldest unacknowledged: {safe}); nothing removed"
                )
            _log.info("trim of %r stops at %s: it is not acknowledged yet", self.stream_key, safe)
            boundary = safe
        with redis_errors("XTRIM", self.stream_key):
            return int(await self.redis.xtrim(self.stream_key, minid=boundary, approximate=False))

    async def _id_after_oldest(self, count: int) -> str | None:
        """The id of the entry that follows the ``count`` oldest ones (None: no such entry)."""
        start = "-"
        remaining = count
        while True:
            page = min(remaining + 1, _PAGE)
            with redis_errors("XRANGE", self.stream_key):
                rows = await self.redis.xrange(self.stream_key, min=start, count=page)
            if not rows:
                return None
            if remaining < len(rows):
                return text(rows[remaining][0])
            remaining -= len(rows)
            start = "(" + text(rows[-1][0])


async def safe_trim_boundary(redis: RedisClient, stream: str) -> str | None:
    """The smallest id some group still needs (oldest pending, or first undelivered);
    entries below it are acknowledged by every group. ``None`` if the stream has no group."""
    boundary: str | None = None
    for group in await read_groups(redis, stream):
        if group.pending > 0:
            with redis_errors("XPENDING", stream):
                summary = await redis.xpending(stream, group.name)
            needed = text(summary["min"])
        else:
            needed = _successor(group.last_delivered_id)
        if boundary is None or _id_key(needed) < _id_key(boundary):
            boundary = needed
    return boundary


def _ordering_key(key: str | bytes) -> bytes:
    try:
        encoded = ordering_key_bytes(key)
    except TypeError as exc:
        raise ConfigurationError(f"{exc}; pass str(...) for numbers") from None
    if encoded is None:
        raise ConfigurationError(
            "an ordering key must not be empty; pass None for a message without one"
        )
    return encoded


def _id_key(entry_id: str) -> tuple[int, int]:
    ms, _, seq = entry_id.partition("-")
    return int(ms), int(seq or 0)


def _successor(entry_id: str) -> str:
    ms, seq = _id_key(entry_id)
    return f"{ms}-{seq + 1}"
