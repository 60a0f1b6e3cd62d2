"""Which deliveries reach a handler: decoded ones. Poison (undecodable, oversized,
deleted while pending, delivered too often, refused by the ordering key function) goes to
the dead-letter stream instead, with the last error this consumer saw for it."""

from __future__ import annotations

import collections
import dataclasses
import enum
import json
import logging
from typing import Any, Final

from .. import tracing
from .._failpoints import failpoint
from ..errors import MessageDecodeError, PayloadValidationError, QueueError
from ._keys import OrderingKeys, Unkeyable
from ._statistics import ConsumerRecorder
from ._streams import Delivery, StreamOperations
from .config import QueueConfig
from .dead_letters import DeadLetterReason, dead_letter_fields
from .models import QueueMessage

__all__ = ["Admission", "SetAside"]

_log = logging.getLogger("safesync_async.queue.consumer")

# Remembered last errors, so a dead letter written on a later delivery can say what failed.
_REMEMBERED_ERRORS = 10_000
_DELETED = "entry was deleted or trimmed while pending"


class SetAside(enum.Enum):
    """A delivery that did not reach a handler."""

    DEAD_LETTERED = "dead_lettered"  # settled: in the dead-letter stream, acked
    KEPT = "kept"  # Redis refused the dead letter: still pending, to be set aside later


class _FromEntry(enum.Enum):
    KEY = "from the entry"


_FROM_ENTRY: Final = _FromEntry.KEY


class Admission:
    """Decodes deliveries or dead-letters them, for one consumer (all its runs and its
    manual API)."""

    def __init__(
        self, config: QueueConfig, streams: StreamOperations, recorder: ConsumerRecorder
    ) -> None:
        self.config = config
        self._streams = streams
        self._recorder = recorder
        self._keys = OrderingKeys(config)
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
        screened = await self.screen(delivery)
        return screened if isinstance(screened, QueueMessage) else None

    async def screen(
        self,
        delivery: Delivery,
        ordering_key: bytes | Unkeyable | _FromEntry | None = _FROM_ENTRY,
    ) -> QueueMessage[Any] | SetAside:
        """Decode a delivery, or set it aside (dead-letter it). ``ordering_key``: the key
        it was scheduled by, if it was (else it is found here)."""
        config = self.config
        if not delivery.fields:
            return await self._set_aside(delivery, DeadLetterReason.DELETED, _DELETED)
        if delivery.size > config.max_message_bytes:
            return await self._set_aside(
                delivery,
                DeadLetterReason.TOO_LARGE,
                f"entry is {delivery.size} bytes, over the limit of {config.max_message_bytes}",
            )
        try:
            payload = config.codec.decode(delivery.fields)
        except PayloadValidationError as exc:
            error = f"{exc} | errors: {json.dumps(exc.errors, default=str)}"
            return await self._set_aside(delivery, DeadLetterReason.INVALID, error)
        except MessageDecodeError as exc:
            return await self._set_aside(delivery, DeadLetterReason.UNDECODABLE, str(exc))
        if config.max_deliveries is not None and delivery.delivery_count > config.max_deliveries:
            error = self._last_errors.get(delivery.id, "last error not known to this consumer")
            return await self._set_aside(delivery, DeadLetterReason.MAX_DELIVERIES, error)
        key = self._keys.of_fields(delivery.fields) if ordering_key is _FROM_ENTRY else ordering_key
        if isinstance(key, Unkeyable):
            return await self._set_aside(delivery, DeadLetterReason.UNDECODABLE, key.error)
        message: QueueMessage[Any] = QueueMessage(
            id=delivery.id,
            stream=config.stream_key,
            group=config.consumer_group,
            payload=payload,
            delivery_count=delivery.delivery_count,
            fields=delivery.fields,
            ordering_key=key,
        )
        if ordering_key is _FROM_ENTRY and self._keys.derived:
            derived = self._keys.of_message(message)
            if isinstance(derived, Unkeyable):
                return await self._set_aside(delivery, DeadLetterReason.UNDECODABLE, derived.error)
            message = dataclasses.replace(message, ordering_key=derived)
        return message

    async def _set_aside(
        self, delivery: Delivery, reason: DeadLetterReason, error: str
    ) -> SetAside:
        written = await self.dead_letter(delivery, reason, error)
        return SetAside.DEAD_LETTERED if written else SetAside.KEPT

    async def report_deleted(self, ids: list[str]) -> None:
        """Entries XAUTOCLAIM found deleted: Redis already dropped them from the pending
        list; leave a tombstone in the dead-letter stream so they are not lost silently."""
        for entry_id in ids:
            await self.dead_letter(Delivery(entry_id, {}, 0), DeadLetterReason.DELETED, _DELETED)

    async def dead_letter(self, delivery: Delivery, reason: DeadLetterReason, error: str) -> bool:
        """Write the dead letter and ack the entry; if Redis refuses, it stays pending
        (False)."""
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
            return False
        self._last_errors.pop(delivery.id, None)
        self._recorder.record_dead_letter(tombstone=reason is DeadLetterReason.DELETED)
        _log.warning(
            "dead-lettered %s %s: %s (%s)", config.stream_key, delivery.id, reason.value, error
        )
        return True
