"""What happens to a delivered entry: decoded (or dead-lettered), handled in its own
transaction (or a batch's), acked after the commit, or recorded as a failure."""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any, Protocol, TypeVar, cast

from .. import tracing
from .._failpoints import failpoint
from ..db.lease import ConnectionLease
from ..db.retry import RETRYABLE_ERRORS, jittered_delay, retry_reason
from ..db.session import DEFAULT_CLEANUP_TIMEOUT, DbSession
from ..errors import (
    CommitOutcomeUnknownError,
    DatabaseDisconnectError,
    MessageDecodeError,
    QueueError,
)
from ..metrics import RegistryArg, metrics_for
from .acks import AckBatcher
from .backoff import Backoff
from .config import QueueConfig
from .dead_letters import DeadLetterReason, dead_letter_fields
from .models import QueueMessage
from .readiness import ConsumerReadiness
from .statistics import ConsumerRecorder
from .streams import Delivery, GroupStream

__all__ = ["DbHandler", "Handler", "InboxStore", "MessageProcessor"]

_log = logging.getLogger("safesync_async.queue.consumer")

Handler = Callable[[QueueMessage[Any]], Awaitable[None]]
DbHandler = Callable[[QueueMessage[Any], DbSession], Awaitable[None]]

# Remembered last errors, so a dead letter written on a later delivery can say what failed.
_REMEMBERED_ERRORS = 10_000
_DELETED = "entry was deleted or trimmed while pending"
# Pause before re-running a transaction that lost a lock conflict: full jitter, doubling.
_RETRY_BASE_DELAY = 0.005
_RETRY_MAX_DELAY = 0.2
_NO_CONTEXT = contextlib.nullcontext()  # reusable: "no span", "no time limit"
_T = TypeVar("_T")


class InboxStore(Protocol):
    """What the consumer needs of an inbox (see :class:`safesync_async.Inbox`)."""

    async def record(self, session: DbSession, group: str, message: QueueMessage[Any]) -> bool:
        """Insert the message's key; False if it was already processed (a duplicate)."""
        ...


class MessageProcessor:
    """Handles deliveries for one consumer. ``acks`` is set while the consumer runs."""

    def __init__(
        self,
        config: QueueConfig,
        streams: GroupStream,
        recorder: ConsumerRecorder,
        *,
        inbox: InboxStore | None,
        registry: RegistryArg,
        on_fatal: Callable[[BaseException], None],
        readiness: ConsumerReadiness | None = None,
    ) -> None:
        self.config = config
        self._streams = streams
        self._recorder = recorder
        self._inbox = inbox
        self._registry = registry
        self._metrics = metrics_for(registry)
        self._on_fatal = on_fatal
        self._readiness = readiness if readiness is not None else ConsumerReadiness()
        self._operation = f"consume:{config.stream_key}"
        self._last_errors: collections.OrderedDict[str, str] = collections.OrderedDict()
        self._database_backoff = Backoff(config.reconnect_initial_delay, config.reconnect_max_delay)
        self._database_retry_at = 0.0
        self.acks: AckBatcher | None = None

    def failed_here(self, entry_id: str) -> bool:
        """Whether this consumer saw the entry's handler fail (it awaits a retry)."""
        return entry_id in self._last_errors

    async def wait_for_database(self) -> None:
        """Hold back new reads while the database is failing (see _database_unavailable)."""
        delay = self._database_retry_at - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)

    # -- one entry, or a batch ---------------------------------------------------------

    async def process(
        self, delivery: Delivery, handler: DbHandler | Handler, lease: ConnectionLease | None
    ) -> None:
        message = await self.admit(delivery)
        if message is not None:
            await self._process_admitted(delivery, message, handler, lease)

    async def process_batch(
        self, batch: list[Delivery], handler: DbHandler | Handler, lease: ConnectionLease
    ) -> None:
        """Batch mode: all messages in one transaction, one COMMIT, acks together. If the
        batch fails, it is rolled back and its messages are handled one by one, so one
        bad message costs the batch a retry, not the others their delivery."""
        admitted = []
        for delivery in batch:
            message = await self.admit(delivery)
            if message is not None:
                admitted.append((delivery, message))
        if not admitted:
            return
        started = time.perf_counter()
        try:
            duplicates = await self._attempts(
                lambda: self._invoke_batch(admitted, handler, lease), len(admitted), lease
            )
        except Exception as exc:
            if self._database_failed(exc, lease):
                for delivery, _ in admitted:
                    await self._database_unavailable(delivery, exc)
                return
            _log.info("batch of %d failed (%r); handling its messages one by one", len(batch), exc)
            for delivery, message in admitted:
                await self._process_admitted(delivery, message, handler, lease)
            return
        finally:
            self._recorder.record_handler_time(time.perf_counter() - started)
        self._committed([delivery for delivery, _ in admitted], duplicates)

    async def admit(self, delivery: Delivery) -> QueueMessage[Any] | None:
        """Decode a delivery, or dead-letter it (poison, deleted, delivered too often)."""
        config = self.config
        if not delivery.fields:
            await self._dead_letter(delivery, DeadLetterReason.DELETED, _DELETED)
            return None
        if delivery.size > config.max_message_bytes:
            await self._dead_letter(
                delivery,
                DeadLetterReason.TOO_LARGE,
                f"entry is {delivery.size} bytes, over the limit of {config.max_message_bytes}",
            )
            return None
        try:
            payload = config.codec.decode(delivery.fields)
        except MessageDecodeError as exc:
            await self._dead_letter(delivery, DeadLetterReason.UNDECODABLE, str(exc))
            return None
        if config.max_deliveries is not None and delivery.delivery_count > config.max_deliveries:
            error = self._last_errors.get(delivery.id, "last error not known to this consumer")
            await self._dead_letter(delivery, DeadLetterReason.MAX_DELIVERIES, error)
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
            await self._dead_letter(Delivery(entry_id, {}, 0), DeadLetterReason.DELETED, _DELETED)

    # -- internals ---------------------------------------------------------------------

    async def _process_admitted(
        self,
        delivery: Delivery,
        message: QueueMessage[Any],
        handler: DbHandler | Handler,
        lease: ConnectionLease | None,
    ) -> None:
        started = time.perf_counter()
        try:
            with self._message_span(message):
                duplicate = await self._attempts(
                    lambda: self._invoke(message, handler, lease), 1, lease
                )
        except Exception as exc:
            if self._database_failed(exc, lease):
                await self._database_unavailable(delivery, exc)
            else:
                await self._handler_failed(delivery, exc)
            return
        finally:
            self._recorder.record_handler_time(time.perf_counter() - started)
        self._committed([delivery], int(duplicate))

    def _committed(self, deliveries: list[Delivery], duplicates: int) -> None:
        """Their transaction committed: queue the acks."""
        self._database_backoff.reset()
        self._readiness.database_ok()
        failpoint("consumer.after_commit")
        self._recorder.record_duplicates(duplicates)
        assert self.acks is not None
        for delivery in deliveries:
            self.acks.add(delivery.id)

    @staticmethod
    def _database_failed(exc: Exception, lease: ConnectionLease | None) -> bool:
        """Whether a failure was the database's rather than the message's: a lost
        connection, or a handler timed out in a server that then did not even answer."""
        if isinstance(exc, DatabaseDisconnectError):
            return True
        return isinstance(exc, TimeoutError) and lease is not None and lease.server_unreachable

    async def _attempts(
        self, attempt: Callable[[], Awaitable[_T]], messages: int, lease: ConnectionLease | None
    ) -> _T:
        """Run ``attempt`` (one transaction, within the time limit); with an engine, run it
        again after a lock conflict, up to ``transaction_retries`` times."""
        retries = self.config.transaction_retries if lease is not None else 0
        failed = 0
        while True:
            try:
                async with self._time_limit(messages):
                    return await attempt()
            except RETRYABLE_ERRORS as exc:
                failed += 1
                if failed > retries:
                    raise
                self._metrics.inc("retries", self._operation, retry_reason(exc))
                _log.debug("%s: running the transaction again after %s", self._operation, exc)
                await asyncio.sleep(jittered_delay(failed, _RETRY_BASE_DELAY, _RETRY_MAX_DELAY))

    def _time_limit(self, messages: int) -> contextlib.AbstractAsyncContextManager[Any]:
        timeout = self.config.handler_timeout
        if timeout is None:
            return _NO_CONTEXT
        return asyncio.timeout(timeout * messages)

    def _message_span(self, message: QueueMessage[Any]) -> contextlib.AbstractContextManager[Any]:
        if not tracing.active():
            return _NO_CONTEXT
        return tracing.message_span(
            message.stream, message.group, message.id, message.fields, message.delivery_count
        )

    def _session(self, lease: ConnectionLease) -> DbSession:
        # Cleanup (COMMIT, ROLLBACK) is bounded like the handler itself, so a frozen
        # database cannot hold a worker much longer than handler_timeout.
        return DbSession(
            lease.engine,
            operation=self._operation,
            registry=self._registry,
            lease=lease,
            cleanup_timeout=self.config.handler_timeout or DEFAULT_CLEANUP_TIMEOUT,
        )

    async def _handle_in(
        self, session: DbSession, message: QueueMessage[Any], handler: DbHandler | Handler
    ) -> bool:
        """Record the message in the inbox and run the handler; True for a duplicate."""
        if self._inbox is not None and not await self._inbox.record(
            session, self.config.consumer_group, message
        ):
            return True
        failpoint("consumer.in_handler")
        await cast(DbHandler, handler)(message, session)
        return False

    async def _invoke(
        self,
        message: QueueMessage[Any],
        handler: DbHandler | Handler,
        lease: ConnectionLease | None,
    ) -> bool:
        """Run the handler (in a transaction when there is an engine); True if the inbox
        recognised the message as already processed."""
        if lease is None:
            await cast(Handler, handler)(message)
            return False
        async with self._session(lease) as session:
            duplicate = await self._handle_in(session, message, handler)
            failpoint("consumer.before_commit")
        return duplicate

    async def _invoke_batch(
        self,
        admitted: list[tuple[Delivery, QueueMessage[Any]]],
        handler: DbHandler | Handler,
        lease: ConnectionLease,
    ) -> int:
        duplicates = 0
        async with self._session(lease) as session:
            for _, message in admitted:
                with self._message_span(message):
                    duplicates += await self._handle_in(session, message, handler)
            failpoint("consumer.before_commit")
        return duplicates

    async def _database_unavailable(self, delivery: Delivery, exc: Exception) -> None:
        """The database, not the message, failed: keep the entry pending without spending
        one of its deliveries, and hold back reads until the database is back."""
        self._recorder.record_failure()
        self._readiness.database_failed(exc)
        _log.warning("database unavailable while handling %s: %s", delivery.id, exc)
        try:
            await self._streams.release(delivery)
        except QueueError as release_error:
            _log.warning("could not release %s: %s", delivery.id, release_error)
        self._database_retry_at = time.monotonic() + self._database_backoff.next_delay()

    async def _handler_failed(self, delivery: Delivery, exc: Exception) -> None:
        self._recorder.record_failure()
        error = f"{type(exc).__name__}: {exc}"
        self._remember_error(delivery.id, error)
        _log.warning(
            "handler failed for %s %s (delivery %d): %s",
            self.config.stream_key,
            delivery.id,
            delivery.delivery_count,
            error,
            exc_info=not isinstance(exc, TimeoutError),
        )
        if isinstance(exc, CommitOutcomeUnknownError):
            return  # it may have committed: redeliver (an inbox makes that safe), never DLQ
        limit = self.config.max_deliveries
        if limit is not None and delivery.delivery_count >= limit:
            await self._dead_letter(delivery, DeadLetterReason.HANDLER_FAILED, error)
        elif self.config.stop_on_error:
            self._on_fatal(exc)

    async def _dead_letter(self, delivery: Delivery, reason: DeadLetterReason, error: str) -> None:
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

    def _remember_error(self, entry_id: str, error: str) -> None:
        self._last_errors[entry_id] = error
        self._last_errors.move_to_end(entry_id)
        while len(self._last_errors) > _REMEMBERED_ERRORS:
            self._last_errors.popitem(last=False)
