"""QueueMessage: one stream entry as a handler sees it."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Generic, TypeVar

__all__ = ["IDEMPOTENCY_KEY_FIELD", "QueueMessage", "entry_timestamp_ms"]

P = TypeVar("P")

#: Optional entry field carrying a producer-chosen idempotency key.
IDEMPOTENCY_KEY_FIELD = b"idempotency_key"


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
            included (1 on the first delivery).
        fields: the raw entry fields, metadata included.
    """

    id: str
    stream: str
    group: str
    payload: P
    delivery_count: int = 1
    fields: Mapping[bytes, bytes] = field(default_factory=dict, repr=False)

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
