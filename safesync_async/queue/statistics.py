"""What a consumer counts: in memory for ``statistics()`` and in Prometheus."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

from ..errors import QueueConnectionError
from ..metrics import Metrics

__all__ = ["ConsumerRecorder", "ConsumerStatistics"]

_log = logging.getLogger("safesync_async.queue.consumer")


@dataclass(frozen=True, slots=True)
class ConsumerStatistics:
    """Counters of one consumer since it was created (see ``QueueConsumer.statistics``)."""

    received: int
    acked: int
    failed: int
    dead_lettered: int
    duplicates: int
    claimed: int
    deleted_while_pending: int
    handed_back: int
    reconnects: int
    groups_recreated: int
    in_flight: int
    ack_waiting: int


class ConsumerRecorder:
    """Counts a consumer's events once, for both its statistics and its metrics."""

    def __init__(self, metrics: Metrics, stream: str, group: str) -> None:
        self._metrics = metrics
        self._labels = (stream, group)
        self.received = 0
        self.acked = 0
        self.failed = 0
        self.dead_lettered = 0
        self.duplicates = 0
        self.claimed = 0
        self.deleted_while_pending = 0
        self.handed_back = 0
        self.reconnects = 0
        self.groups_recreated = 0

    def snapshot(self, *, in_flight: int, ack_waiting: int) -> ConsumerStatistics:
        return ConsumerStatistics(
            received=self.received,
            acked=self.acked,
            failed=self.failed,
            dead_lettered=self.dead_lettered,
            duplicates=self.duplicates,
            claimed=self.claimed,
            deleted_while_pending=self.deleted_while_pending,
            handed_back=self.handed_back,
            reconnects=self.reconnects,
            groups_recreated=self.groups_recreated,
            in_flight=in_flight,
            ack_waiting=ack_waiting,
        )

    def record_received(self, count: int) -> None:
        self.received += count

    def record_acks(self, sent: int, acked: int, seconds: float) -> None:
        self.acked += sent
        self._metrics.inc("messages", *self._labels, "acked", amount=sent)
        self._metrics.observe("ack_seconds", seconds, *self._labels)

    def record_failure(self) -> None:
        self.failed += 1
        self._metrics.inc("messages", *self._labels, "failed")

    def record_dead_letter(self, *, tombstone: bool) -> None:
        if tombstone:
            self.deleted_while_pending += 1
            self._metrics.inc("messages", *self._labels, "deleted")
        else:
            self.dead_lettered += 1
            self._metrics.inc("messages", *self._labels, "dead_lettered")

    def record_duplicates(self, count: int) -> None:
        if count:
            self.duplicates += count
            self._metrics.inc("messages", *self._labels, "duplicate", amount=count)

    def record_claimed(self, count: int) -> None:
        if count:
            self.claimed += count
            self._metrics.inc("claimed", *self._labels, amount=count)

    def record_handed_back(self, count: int) -> None:
        self.handed_back += count

    def record_connection_error(self, exc: QueueConnectionError) -> None:
        self.reconnects += 1
        self._metrics.inc("reconnects", *self._labels)
        _log.warning("Redis connection problem, backing off: %s", exc)

    def record_group_recreated(self) -> None:
        self.groups_recreated += 1
        self._metrics.inc("groups_recreated", *self._labels)

    def track_in_flight(self, count: Callable[[], int]) -> Callable[[], None]:
        """Count ``count()`` in the in-flight gauge whenever metrics are collected; returns
        the function that stops counting it."""
        return self._metrics.track("in_flight", count, *self._labels)

    def record_handler_time(self, seconds: float) -> None:
        self._metrics.observe("handler_seconds", seconds, *self._labels)

    def record_lag(self, lag: float) -> None:
        self._metrics.set("lag", lag, *self._labels)
