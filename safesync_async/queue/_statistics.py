"""What a consumer counts: in memory for ``statistics()`` and in Prometheus."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

from ..errors import QueueUnavailableError
from ..metrics import Metrics
from .readiness import ConsumerReadiness

__all__ = ["ConsumerRecorder", "ConsumerStatistics"]

_log = logging.getLogger("safesync_async.queue.consumer")


@dataclass(frozen=True, slots=True)
class ConsumerStatistics:
    """Counters of one consumer since it was created (see ``QueueConsumer.statistics``).

    Attributes:
        received: entries read or claimed.
        acked: entries acknowledged after their transaction committed (or handler
            returned).
        failed: deliveries whose handling did not commit, whatever the reason (the
            database outages below included).
        dead_lettered: entries moved to the dead-letter stream.
        duplicates: redeliveries the inbox recognised and skipped.
        claimed: stale entries claimed from the pending list.
        deleted_while_pending: entries found deleted or trimmed while pending
            (tombstones in the dead-letter stream).
        handed_back: unstarted entries handed back at a graceful stop.
        reconnects: Redis connection losses and refusals (OOM, read-only replica) after
            which the consumer backed off and retried.
        groups_recreated: consumer groups found missing and created again.
        in_flight: entries held now (being handled or read ahead).
        ack_waiting: committed entries whose XACK is not confirmed yet.
        database_outages: failed deliveries that were database outages (see
            ``DatabaseUnavailableError``): kept pending without spending a delivery.
        database_unavailable: the last database result was an outage (reads are backing
            off); cleared by the next commit. For readiness checks.
        redis_unavailable: the last Redis command failed with a connection loss or a
            refusal; cleared by the next successful one. For readiness checks.
        fenced: failed deliveries whose transaction was refused because their partition
            had a newer owner (partitioned streams): left to that owner, none spent.
    """

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
    database_outages: int = 0
    database_unavailable: bool = False
    redis_unavailable: bool = False
    fenced: int = 0


class ConsumerRecorder:
    """Counts a consumer's events once, for both its statistics and its metrics."""

    def __init__(
        self, metrics: Metrics, stream: str, group: str, readiness: ConsumerReadiness
    ) -> None:
        self._metrics = metrics
        #: Whether the consumer can work now (group, loops, outages), for health checks.
        self.readiness = readiness
        self._labels = (metrics.stream_label(stream), group)
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
        self.database_outages = 0
        self.fenced = 0
        self.redis_unavailable = False

    @property
    def metrics_enabled(self) -> bool:
        return self._metrics.enabled

    def snapshot(
        self, *, in_flight: int, ack_waiting: int, database_unavailable: bool
    ) -> ConsumerStatistics:
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
            database_outages=self.database_outages,
            database_unavailable=database_unavailable,
            redis_unavailable=self.redis_unavailable,
            fenced=self.fenced,
        )

    def record_received(self, count: int) -> None:
        self.received += count

    def record_acks(self, sent: int, acked: int, seconds: float) -> None:
        self.acked += sent
        self.redis_unavailable = False
        self._metrics.inc("messages", *self._labels, "acked", amount=sent)
        self._metrics.observe("ack_seconds", seconds, *self._labels)

    def record_failure(self, count: int = 1) -> None:
        self.failed += count
        self._metrics.inc("messages", *self._labels, "failed", amount=count)

    def record_database_outage(self, count: int) -> None:
        """``count`` deliveries failed because the database was unavailable."""
        self.record_failure(count)
        self.database_outages += count
        self._metrics.inc("database_outages", *self._labels, amount=count)

    def record_fenced(self, count: int) -> None:
        """``count`` deliveries were refused by partition fencing."""
        self.record_failure(count)
        self.fenced += count
        self._metrics.inc("fenced_commits", *self._labels)

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

    def record_redis_unavailable(self, exc: QueueUnavailableError) -> None:
        self.reconnects += 1
        self.redis_unavailable = True
        self.readiness.redis_failed(exc)
        self._metrics.inc("reconnects", *self._labels)
        _log.warning("Redis unavailable, backing off: %s", exc)

    def record_redis_available(self) -> None:
        if self.redis_unavailable:
            self.redis_unavailable = False
            self.readiness.redis_ok()

    def record_group_recreated(self) -> None:
        self.groups_recreated += 1
        self.readiness.group_exists()
        self._metrics.inc("groups_recreated", *self._labels)

    def track_in_flight(self, count: Callable[[], int]) -> Callable[[], None]:
        """Count ``count()`` in the in-flight gauge whenever metrics are collected; returns
        the function that stops counting it."""
        return self._metrics.track("in_flight", count, *self._labels)

    def record_handler_time(self, seconds: float) -> None:
        self._metrics.observe("handler_seconds", seconds, *self._labels)

    def record_lag(self, lag: float) -> None:
        self._metrics.set("lag", lag, *self._labels)
