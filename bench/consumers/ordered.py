"""safesync_async's QueueConsumer with key-ordered processing: the deposits of one account
are applied one at a time, in stream order; different accounts concurrently."""

from __future__ import annotations

import dataclasses
from typing import Any

from safesync_async import QueueConsumer, QueueMessage

from .safesync import SafesyncConsumer


def account_key(message: QueueMessage[Any]) -> str:
    """The ordering key: the deposit's account (the workload spreads 1,000 of them)."""
    return str(message.payload["account"])


class KeyOrderedConsumer(SafesyncConsumer):
    """The same consumer and handler as :class:`SafesyncConsumer`, with
    ``QueueConfig(ordering="key", ordering_key=account_key)``: the key is derived from
    the payload, so the stream is the one every variant consumes."""

    async def aprepare(self) -> None:
        await super().aprepare()
        config = dataclasses.replace(self.consumer.config, ordering="key", ordering_key=account_key)
        self.consumer = QueueConsumer(self.consumer.redis, config)
