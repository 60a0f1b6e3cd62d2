"""What a delivery that did not commit means: a database outage, an unknown COMMIT
outcome or a newer owner of its partition (none of them the message's fault: kept
pending, no delivery spent), or the handler's own failure (an attempt spent, and a dead
letter once they are used up)."""

from __future__ import annotations

import enum
import logging
from collections.abc import Callable, Sequence

from ..db.lease import ConnectionLease
from ..errors import CommitOutcomeUnknownError, PartitionFencedError, QueueError
from ._admission import Admission
from ._outages import DatabaseOutage, is_database_outage
from ._statistics import ConsumerRecorder
from ._streams import Delivery, StreamOperations
from .config import QueueConfig
from .dead_letters import DeadLetterReason

__all__ = ["FailureHandler", "Outcome"]

_log = logging.getLogger("safesync_async.queue.consumer")

# Not the message's fault: kept pending without spending a delivery.
_NOT_SETTLED = (CommitOutcomeUnknownError, PartitionFencedError)


class Outcome(enum.Enum):
    """What became of a delivery a worker took."""

    DONE = "done"  # committed (acked) or dead-lettered: nothing more to do
    FAILED = "failed"  # the handler failed: an attempt was spent
    KEPT = "kept"  # not settled, no attempt spent: an outage, an unknown COMMIT outcome,
    # a dead letter Redis refused, or not started because its key's earlier message failed


class FailureHandler:
    """Settles what a failed delivery means for its entry (see the module)."""

    def __init__(
        self,
        config: QueueConfig,
        streams: StreamOperations,
        recorder: ConsumerRecorder,
        admission: Admission,
        outage: DatabaseOutage,
        on_fatal: Callable[[BaseException], None],
    ) -> None:
        self.config = config
        self._streams = streams
        self._recorder = recorder
        self._admission = admission
        self._outage = outage
        self._on_fatal = on_fatal

    @staticmethod
    def not_the_messages_fault(exc: Exception, lease: ConnectionLease | None) -> bool:
        """An outage, an unknown COMMIT outcome or a fenced transaction."""
        return is_database_outage(exc, lease) or isinstance(exc, _NOT_SETTLED)

    async def failed(
        self, delivery: Delivery, exc: Exception, lease: ConnectionLease | None
    ) -> Outcome:
        """Nothing was committed (or the outcome is unknown): keep the entry pending, as
        an outage, an unknown outcome or the handler's failure."""
        if self.not_the_messages_fault(exc, lease):
            await self.not_settled([delivery], exc, lease)
            return Outcome.KEPT
        return await self._handler_failed(delivery, exc)

    async def not_settled(
        self, deliveries: Sequence[Delivery], exc: Exception, lease: ConnectionLease | None
    ) -> None:
        """A database outage, an unknown COMMIT outcome or a newer owner of the partition:
        not the messages' fault."""
        if is_database_outage(exc, lease):
            await self._database_unavailable(deliveries, exc)
        elif isinstance(exc, PartitionFencedError):
            self._recorder.record_fenced(len(deliveries))
            _log.warning("%s: left to the partition's new owner: %s", deliveries[0].id, exc)
        else:
            self._outcome_unknown(deliveries, exc)

    async def _database_unavailable(self, deliveries: Sequence[Delivery], exc: Exception) -> None:
        """The database, not the message, failed: keep the entries pending without
        spending one of their deliveries, and hold back reads until the database is back."""
        self._recorder.record_database_outage(len(deliveries))
        self._outage.begin(exc)
        _log.warning(
            "database unavailable while handling %s (%d message(s) kept for later): %s",
            deliveries[0].id,
            len(deliveries),
            exc,
        )
        try:
            await self._streams.release(deliveries)
        except QueueError as release_error:
            _log.warning("could not release %s: %s", [d.id for d in deliveries], release_error)

    def _outcome_unknown(self, deliveries: Sequence[Delivery], exc: Exception) -> None:
        """The COMMIT may have persisted: never acked, never dead-lettered for it;
        redelivered after claim_min_idle_ms (an inbox makes the redelivery a no-op)."""
        self._recorder.record_failure(len(deliveries))
        for delivery in deliveries:
            self._admission.remember_error(delivery.id, f"{type(exc).__name__}: {exc}")
        _log.warning(
            "commit outcome unknown for %s (%d message(s)); they will be redelivered: %s",
            deliveries[0].id,
            len(deliveries),
            exc,
        )

    async def _handler_failed(self, delivery: Delivery, exc: Exception) -> Outcome:
        self._recorder.record_failure()
        error = f"{type(exc).__name__}: {exc}"
        self._admission.remember_error(delivery.id, error)
        _log.warning(
            "handler failed for %s %s (delivery %d): %s",
            self.config.stream_key,
            delivery.id,
            delivery.delivery_count,
            error,
            exc_info=not isinstance(exc, TimeoutError),
        )
        limit = self.config.max_deliveries
        if limit is not None and delivery.delivery_count >= limit:
            if await self._admission.dead_letter(delivery, DeadLetterReason.HANDLER_FAILED, error):
                return Outcome.DONE
        elif self.config.stop_on_error:
            self._on_fatal(exc)
        return Outcome.FAILED
