"""Dead letters: what is written to the dead-letter stream, and how to read it back.

A dead-letter entry keeps the original entry's fields unchanged (so it can be replayed
as is) and adds metadata fields prefixed ``dlq:``: the original stream, id and group, the
consumer, the number of deliveries, the reason and the error.
"""

from __future__ import annotations

import enum
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from ..errors import MessageDecodeError

__all__ = ["DeadLetter", "DeadLetterReason", "dead_letter_fields", "parse_dead_letter"]

PREFIX = b"dlq:"
_MAX_ERROR_CHARS = 2_000


class DeadLetterReason(enum.Enum):
    HANDLER_FAILED = "handler_failed"  # the last allowed delivery failed
    MAX_DELIVERIES = "max_deliveries"  # delivered too often (e.g. it crashed consumers)
    UNDECODABLE = "undecodable"  # the codec could not decode it
    INVALID = "invalid"  # decoded, but the payload failed its model's validation
    TOO_LARGE = "too_large"  # over max_message_bytes, not decoded
    DELETED = "deleted"  # trimmed or deleted while pending: a tombstone, no payload


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """A dead-letter entry read back from the dead-letter stream."""

    id: str
    original_stream: str
    original_id: str
    group: str
    consumer: str
    deliveries: int
    reason: DeadLetterReason
    error: str
    dead_lettered_at_ms: int
    fields: dict[bytes, bytes]  # the original entry's fields (empty for DELETED)


def dead_letter_fields(
    *,
    stream: str,
    entry_id: str,
    group: str,
    consumer: str,
    deliveries: int,
    reason: DeadLetterReason,
    error: str,
    original: Mapping[bytes, bytes],
) -> dict[bytes, bytes]:
    meta = {
        b"stream": stream,
        b"id": entry_id,
        b"group": group,
        b"consumer": consumer,
        b"deliveries": str(deliveries),
        b"reason": reason.value,
        b"error": error[:_MAX_ERROR_CHARS],
        b"at_ms": str(int(time.time() * 1000)),
    }
    fields = {k: v for k, v in original.items() if not k.startswith(PREFIX)}
    fields.update({PREFIX + k: v.encode("utf-8", "replace") for k, v in meta.items()})
    return fields


def parse_dead_letter(entry_id: str, fields: Mapping[bytes, bytes]) -> DeadLetter:
    """Read a dead-letter entry back; :class:`MessageDecodeError` if it is not one (the
    stream may contain entries written by something else)."""

    def meta(name: str) -> str:
        return fields.get(PREFIX + name.encode(), b"").decode("utf-8", "replace")

    try:
        return _parse(entry_id, fields, meta)
    except ValueError as exc:
        raise MessageDecodeError(f"entry {entry_id} is not a dead letter: {exc}") from exc


def _parse(entry_id: str, fields: Mapping[bytes, bytes], meta: Callable[[str], str]) -> DeadLetter:
    return DeadLetter(
        id=entry_id,
        original_stream=meta("stream"),
        original_id=meta("id"),
        group=meta("group"),
        consumer=meta("consumer"),
        deliveries=int(meta("deliveries") or 0),
        reason=DeadLetterReason(meta("reason")),
        error=meta("error"),
        dead_lettered_at_ms=int(meta("at_ms") or 0),
        fields={k: v for k, v in fields.items() if not k.startswith(PREFIX)},
    )
