"""QueueMessage: one stream entry as a handler sees it."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Generic, TypeVar

__all__ = [
    "IDEMPOTENCY_KEY_FIELD",
    "ORDERING_KEY_FIELD",
    "QueueMessage",
    "entry_timestamp_ms",
    "ordering_key_bytes",
]

P = TypeVar("P")

#: Optional entry field carrying a producer-chosen idempotency key.
IDEMPOTENCY_KEY_FIELD = b"idempotency_key"
#: Optional entry field carrying a producer-chosen ordering key (``publish(..., key=...)``).
ORDERING_KEY_FIELD = b"ordering_key"


def ordering_key_bytes(key: bytes | str | None) -> bytes | None:
    """An ordering key as bytes: str as UTF-8 (lone surrogates kept), empty as no key."""
    if key is None or isinstance(key, bytes):
        return key or None
    if isinstance(key, str):
        return key.encode("utf-8", "surrogateescape") or None
    raise TypeError(f"an ordering key must be bytes, str or None, not {type(key).__name__}")


def entry_timestamp_ms(entry_id: str) -> int:
    """The millisecond timestamp part of a stream entry id (``"1700000000000-0"``)."""
    return int(entry_id.partition("-")[0])


@dataclass(frozen=True, slots=True)
class QueueMessage(Generic[P]):
    """A decoded stream entry.

    Attributes:
        id: the entry id, e.g. ``"1718000000000-0"``.
        stream: the stream key.
        group: the consumer group that delivered it.
        payload: the decoded payload (a dict for the default JSON codec).
        delivery_count: how many times the group has delivered this entry, this time
            included (1 on the first delivery); under key ordering, failed attempts
            retried in place count too.
        fields: the raw entry fields, metadata included.
        ordering_key: the key that orders it under ``QueueConfig(ordering="key")``: the
            entry's ``ordering_key`` field, or what ``QueueConfig.ordering_key`` derived
            from the message; ``None`` when it has none.
    """

    id: str
    stream: str
    group: str
    payload: P
    delivery_count: int = 1
    fields: Mapping[bytes, bytes] = field(default_factory=dict, repr=False)
    ordering_key: bytes | None = None

    @property
    def enqueued_at(self) -> datetime:
        """When the entry was added to the stream (from its id)."""
        return datetime.fromtimestamp(entry_timestamp_ms(self.id) / 1000, tz=UTC)

    @property
    def idempotency_key(self) -> str | None:
        """The producer-supplied idempotency key, if the entry carries a non-empty one.
        Bytes that are not UTF-8 are kept as lone surrogates (``surrogateescape``), so
        distinct keys stay distinct; the inbox compares the raw bytes."""
        raw = self.fields.get(IDEMPOTENCY_KEY_FIELD)
        return raw.decode("utf-8", "surrogateescape") if raw else None
