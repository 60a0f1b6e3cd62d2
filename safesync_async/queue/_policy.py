"""What a consumer does when a stream command fails: wait out an unavailable Redis, recreate
a vanished group (or its stream) per ``on_missing_group``, give up on anything else."""

from __future__ import annotations

import logging

from ..errors import ConsumerGroupMissingError, QueueError, QueueUnavailableError
from ._backoff import Backoff
from ._statistics import ConsumerRecorder
from ._streams import StreamOperations
from .config import QueueConfig

__all__ = ["StreamPolicy"]

_log = logging.getLogger("safesync_async.queue.consumer")


class StreamPolicy:
    """The recovery policy of one consumer, shared by its loops and its manual API."""

    def __init__(
        self, config: QueueConfig, streams: StreamOperations, recorder: ConsumerRecorder
    ) -> None:
        self._config = config
        self._streams = streams
        self._recorder = recorder

    async def recover(self, exc: QueueError, backoff: Backoff) -> None:
        """After a failed command of a consumer loop: return when the loop may try again,
        raise the error the consumer must stop with.

        * Redis unavailable (connection lost, OOM, read-only...): back off.
        * The group is gone (NOGROUP, or the stream was deleted during a blocking read):
          recreate it with ``on_missing_group="recreate"``; raise with ``"fail"``.
        * Anything else (a key that is no longer a stream...): raise.
        """
        if isinstance(exc, QueueUnavailableError):
            self._recorder.record_redis_unavailable(exc)
            await backoff.sleep()
        elif isinstance(exc, ConsumerGroupMissingError):
            try:
                await self.recreate_group(exc)
            except QueueUnavailableError as again:
                self._recorder.record_redis_unavailable(again)
                await backoff.sleep()  # the next command meets the missing group again
        else:
            raise exc

    async def recreate_group(self, exc: ConsumerGroupMissingError) -> None:
        """Apply ``on_missing_group``: recreate the group (and the stream) from
        ``start_id``, counted; or raise ``exc``."""
        config = self._config
        if config.on_missing_group == "fail":
            _log.error("consumer group missing and on_missing_group='fail': %s", exc)
            raise exc
        _log.error(
            "consumer group %r on %r vanished (the stream was deleted, Redis restarted "
            "without persistence, or the group was destroyed); recreating it from %r: %s",
            config.consumer_group,
            config.stream_key,
            config.start_id,
            exc,
        )
        self._recorder.readiness.group_missing()
        await self._streams.ensure_group(config.start_id)
        self._recorder.record_group_recreated()
