"""Ordering keys: which key a delivery is ordered by under ``QueueConfig(ordering="key")``,
read from the entry's ``ordering_key`` field or derived from the decoded message by the
configured function."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..errors import MessageDecodeError
from ._streams import Delivery
from .config import QueueConfig
from .models import ORDERING_KEY_FIELD, QueueMessage, ordering_key_bytes

__all__ = ["OrderingKeys", "ScheduledKey", "Unkeyable"]


@dataclass(frozen=True, slots=True)
class Unkeyable:
    """The key function refused the message (MessageDecodeError): it is dead-lettered."""

    error: str


#: What a delivery is scheduled by: its key, none (no ordering constraint), or a refusal.
ScheduledKey = bytes | Unkeyable | None


class OrderingKeys:
    """Finds ordering keys for one consumer. Without a key function the key is the entry's
    ``ordering_key`` field (no decoding); with one, the function of the decoded message."""

    def __init__(self, config: QueueConfig) -> None:
        self.config = config
        self._function = config.ordering_key

    def of_fields(self, fields: dict[bytes, bytes]) -> bytes | None:
        """The key the producer set in the entry, if any."""
        return fields.get(ORDERING_KEY_FIELD) or None

    def of_delivery(self, delivery: Delivery) -> ScheduledKey:
        """The key a delivery is scheduled by, found when it is read. An entry that
        cannot be decoded (or is deleted, or too large) has none: the worker that takes
        it dead-letters it. A key function's other exceptions propagate (a bug)."""
        if self._function is None:
            return self.of_fields(delivery.fields)
        config = self.config
        if not delivery.fields or delivery.size > config.max_message_bytes:
            return None
        try:
            payload = config.codec.decode(delivery.fields)
        except MessageDecodeError:
            return None
        message: QueueMessage[Any] = QueueMessage(
            id=delivery.id,
            stream=config.stream_key,
            group=config.consumer_group,
            payload=payload,
            delivery_count=delivery.delivery_count,
            fields=delivery.fields,
        )
        return self._call(message)

    @property
    def derived(self) -> bool:
        """Whether keys come from a function of the message (else from the field)."""
        return self._function is not None

    def of_message(self, message: QueueMessage[Any]) -> ScheduledKey:
        """The key function's key for a decoded message (the manual API's path)."""
        if self._function is None:
            return message.ordering_key
        return self._call(message)

    def _call(self, message: QueueMessage[Any]) -> ScheduledKey:
        assert self._function is not None
        try:
            return ordering_key_bytes(self._function(message))
        except MessageDecodeError as exc:
            return Unkeyable(f"ordering_key: {exc}")
