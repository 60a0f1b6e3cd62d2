"""Which deliveries reach a handler: decoded ones. Poison (undecodable, oversized,
deleted while pending, delivered too often) goes to the dead-letter stream instead, with
the last error this consumer saw for it."""

from __future__ import annotations

import collections
import json
import logging
from typing import Any

from .. import tracing
from .._failpoints import failpoint
from ..errors import MessageDecodeError, PayloadValidationError, QueueError
from ._statistics import ConsumerRecorder
from ._streams import Delivery, StreamOperations
from .config import QueueConfig
from .dead_letters import DeadLetterReason, dead_letter_fields
from .models import QueueMessage

__all__ = ["Admission"]

_log = logging.getLogger("safesync_async.queue.consumer")

# Remembered last errors, so a dead letter written on a later delivery can say what failed.
_REMEMBERED_ERRORS = 10_000
_DELETED = "entry was deleted or trimmed while pending"


class Admission:
    """Decodes deliveries or dead-letters them, for one consumer (all its runs and its
    manual API)."""

    def __init__(
        self, config: QueueConfig, streams: StreamOperations, recorder: ConsumerRecorder
    ) -> None:
        self.config = config
        self._streams = streams
        self._recorder = recorder
        self._last_errors: collections.OrderedDict[str, str] = collections.OrderedDict()

    def failed_here(self, entry_id: str) -> bool:
        """Whether this consumer saw the entry's handler fail (it awaits a retry)."""
        return entry_id in self._last_errors

    def remember_error(self, entry_id: str, error: str) -> None:
        self._last_errors[entry_id] = error
        self._last_errors.move_to_end(entry_id)
        while len(self._last_errors) > _REMEMBERED_ERRORS:
            self._last_errors.popitem(last=False)

    async def admit(self, delivery: Delivery) -> QueueMessage[Any] | None:
        """Decode a delivery, or dead-letter it (poison, deleted, delivered too often)."""
        config = self.config
        if not delivery.fields:
            await self.dead_letter(delivery, DeadLetterReason.DELETED, _DELETED)
            return None
        if delivery.size > config.max_message_bytes:
            await self.dead_letter(
                delivery,
                DeadLetterReason.TOO_LARGE,
                f"entry is {delivery.size} bytes, over the limit of {config.max_message_bytes}",
            )
            return None
        try:
            payload = config.codec.decode(delivery.fields)
        except PayloadValidationError as exc:
            error = f"{exc} | errors: {json.dumps(exc.errors, default=str)}"
            await self.dead_letter(delivery, DeadLetterReason.INVALID, error)
            return None
        except MessageDecodeError as exc:
            await self.dead_letter(delivery, DeadLetterReason.UNDECODABLE, str(exc))
            return None
        if config.max_deliveries is not None and delivery.delivery_count > config.max_deliveries:
            error = self._last_errors.get(delivery.id, "last error not known to this consumer")
            await self.dead_letter(delivery, DeadLetterReason.MAX_DELIVERIES, error)
            return None
        return QueueMessage(
            id=delivery.id,
            stream=config.stream_key,
            group=config.consumer_group,
            payload=payload,
            delivery_count=delivery.delivery_count,
            fields=delivery.fields,
        )

    async def report_deleted(self, ids: list[str]) -> None:
        """Entries XAUTOCLAIM found deleted: Redis already dropped them from the pending
        list; leave a tombstone in the dead-letter stream so they are not lost silently."""
        for entry_id in ids:
            await self.dead_letter(Delivery(entry_id, {}, 0), DeadLetterReason.DELETED, _DELETED)

    async def dead_letter(self, delivery: Delivery, reason: DeadLetterReason, error: str) -> None:
        """Write the dead letter and ack the entry; if Redis refuses, it stays pending."""
        config = self.config
        fields = dead_letter_fields(
            stream=config.stream_key,
            entry_id=delivery.id,
            group=config.consumer_group,
            consumer=config.consumer_name,
            deliveries=delivery.delivery_count,
            reason=reason,
            error=error,
            original=delivery.fields,
        )
        try:
            failpoint("dead_letter.before")
            with tracing.messaging_span(
                "dead_letter",
                config.stream_key,
                group=config.consumer_group,
                attributes={"messaging.message.id": delivery.id, "safesync.reason": reason.value},
            ):
                await self._streams.dead_letter(config.dead_letters, fields, delivery.id)
            failpoint("dead_letter.after")
        except QueueError as exc:
            _log.error(
                "could not dead-letter %s (%s); it stays pending: %s",
                delivery.id,
                reason.value,
                exc,
            )
            return
        self._last_errors.pop(delivery.id, None)
        self._recorder.record_dead_letter(tombstone=reason is DeadLetterReason.DELETED)
        _log.warning(
            "dead-lettered %s %s: %s (%s)", config.stream_key, delivery.id, reason.value, error
        )
