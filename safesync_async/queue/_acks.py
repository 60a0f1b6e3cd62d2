"""Batched acknowledgements: ids of committed messages go out in multi-id XACKs."""

from __future__ import annotations

import asyncio
import logging
import time

from .. import tracing
from .._failpoints import failpoint
from ..errors import QueueUnavailableError
from ._backoff import Backoff
from ._statistics import ConsumerRecorder
from ._streams import StreamOperations

__all__ = ["AckBatcher"]

_log = logging.getLogger("safesync_async.queue.acks")


class AckBatcher:
    """Acks ids after their transaction committed, many per XACK.

    There is no timer: while one XACK is on the wire, the ids of messages committed
    meanwhile gather for the next one, so batches grow with load and latency stays one
    round trip. While Redis is unavailable the ids are kept and retried with backoff.
    """

    def __init__(
        self, streams: StreamOperations, backoff: Backoff, recorder: ConsumerRecorder
    ) -> None:
        self._streams = streams
        self._backoff = backoff
        self._recorder = recorder
        self._ids: list[str] = []
        self._sending: list[str] = []
        self._wakeup = asyncio.Event()
        self._closing = False

    @property
    def waiting(self) -> int:
        """Committed messages whose ack has not been confirmed yet."""
        return len(self._ids)

    def __contains__(self, entry_id: object) -> bool:
        """Whether the entry committed and its ack is not confirmed yet."""
        return entry_id in self._ids or entry_id in self._sending

    def add(self, entry_id: str) -> None:
        self._ids.append(entry_id)
        self._wakeup.set()

    def close(self) -> None:
        """Ask :meth:`run` to flush what is left and return."""
        self._closing = True
        self._wakeup.set()

    async def run(self) -> None:
        while True:
            if not self._ids:
                if self._closing:
                    return
                self._wakeup.clear()
                await self._wakeup.wait()
                continue
            await self.flush_once()

    async def flush_once(self) -> None:
        ids, self._ids = self._ids, []
        self._sending = ids
        started = time.perf_counter()
        try:
            failpoint("ack.before")
            with tracing.messaging_span(
                "ack", self._streams.stream, group=self._streams.group, count=len(ids)
            ):
                acked = await self._streams.ack(ids)
            failpoint("ack.after")
        except QueueUnavailableError as exc:
            self._ids[:0] = ids
            self._recorder.record_redis_unavailable(exc)
            await self._backoff.sleep()
            return
        except BaseException:
            self._ids[:0] = ids
            raise
        finally:
            self._sending = []
        self._backoff.reset()
        if acked < len(ids):
            _log.warning(
                "XACK on %r acknowledged %d of %d ids: the others were no longer pending "
                "(claimed and acked elsewhere, or the group was recreated)",
                self._streams.stream,
                acked,
                len(ids),
            )
        self._recorder.record_acks(len(ids), acked, time.perf_counter() - started)
