"""What happens to an admitted message: handled in its own transaction (or a batch's),
acked once the COMMIT is confirmed, or kept pending as a failure, an unknown outcome or a
database outage; and what each delivery's outcome means for its retry."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Protocol, cast

from .. import tracing
from .._failpoints import failpoint
from ..db.lease import ConnectionLease
from ..db.retry import RETRYABLE_ERRORS, jittered_delay, retry_reason
from ..db.session import (
    DEFAULT_CLEANUP_TIMEOUT,
    DbSession,
    SessionFactory,
    TransactionOutcome,
)
from ..metrics import RegistryArg, metrics_for
from ._acks import AckBatcher
from ._admission import Admission, SetAside
from ._failures import FailureHandler, Outcome
from ._keys import ScheduledKey
from ._outages import DatabaseOutage
from ._statistics import ConsumerRecorder
from ._streams import Delivery, StreamOperations
from .config import QueueConfig
from .models import QueueMessage

__all__ = [
    "DbHandler",
    "Handler",
    "InboxStore",
    "KeyLookup",
    "MessageProcessor",
    "TransactionFence",
]

_log = logging.getLogger("safesync_async.queue.consumer")

Handler = Callable[[QueueMessage[Any]], Awaitable[None]]
DbHandler = Callable[[QueueMessage[Any], DbSession], Awaitable[None]]

# Pause before re-running a transaction that lost a lock conflict: full jitter, doubling.
_RETRY_BASE_DELAY = 0.005
_RETRY_MAX_DELAY = 0.2
_NO_CONTEXT = contextlib.nullcontext()  # reusable: "no span", "no time limit"


_SET_ASIDE = {SetAside.DEAD_LETTERED: Outcome.DONE, SetAside.KEPT: Outcome.KEPT}


class KeyLookup(Protocol):
    """The ordering keys deliveries were scheduled by (key-ordered mode)."""

    def key(self, delivery: Delivery) -> ScheduledKey: ...


class InboxStore(Protocol):
    """What the consumer needs of an inbox (see :class:`safesync_async.Inbox`)."""

    async def record(self, session: DbSession, group: str, message: QueueMessage[Any]) -> bool:
        """Insert the message's key; False if it was already processed (a duplicate)."""
        ...


class TransactionFence(Protocol):
    """A last check in each handler transaction, before its COMMIT (partition fencing)."""

    async def check(self, session: DbSession) -> None:
        """Raise :class:`PartitionFencedError` to refuse (roll back) the transaction."""
        ...


class MessageProcessor:
    """Handles the deliveries of one run; committed ones go to ``acks``. With ``keys``
    (key-ordered mode) a message is never started after an earlier message of its key
    failed in the same batch."""

    def __init__(
        self,
        config: QueueConfig,
        streams: StreamOperations,
        recorder: ConsumerRecorder,
        admission: Admission,
        outage: DatabaseOutage,
        acks: AckBatcher,
        *,
        inbox: InboxStore | None,
        registry: RegistryArg,
        on_fatal: Callable[[BaseException], None],
        keys: KeyLookup | None = None,
        fence: TransactionFence | None = None,
    ) -> None:
        self.config = config
        self._recorder = recorder
        self._admission = admission
        self._outage = outage
        self._acks = acks
        self._inbox = inbox
        self._registry = registry
        self._metrics = metrics_for(registry)
        self._failures = FailureHandler(config, streams, recorder, admission, outage, on_fatal)
        self._keys = keys
        self._fence = fence
        self._operation = f"consume:{config.stream_key}"
        self._sessions: SessionFactory | None = None

    async def handle(
        self, batch: list[Delivery], handler: DbHandler | Handler, lease: ConnectionLease | None
    ) -> list[Outcome]:
        """Handle what a worker took: with an engine and several deliveries, as one batch
        (one transaction); else one after another. One outcome per delivery, in order."""
        if len(batch) > 1 and lease is not None:
            return await self._batch(batch, handler, lease)
        return await self._in_order(batch, None, handler, lease)

    async def _in_order(
        self,
        batch: Sequence[Delivery],
        messages: Sequence[QueueMessage[Any]] | None,
        handler: DbHandler | Handler,
        lease: ConnectionLease | None,
    ) -> list[Outcome]:
        """One by one (``messages``: already admitted). Under key ordering a delivery whose
        key already failed here is not started: it waits for that one (KEPT)."""
        outcomes = []
        failed_keys: set[bytes] = set()
        for index, delivery in enumerate(batch):
            key = self._key(delivery)
            if key is not None and key in failed_keys:
                outcomes.append(Outcome.KEPT)
                continue
            if messages is None:
                outcome = await self._process(delivery, handler, lease)
            else:
                outcome = await self._process_admitted(delivery, messages[index], handler, lease)
            if outcome is not Outcome.DONE and key is not None:
                failed_keys.add(key)
            outcomes.append(outcome)
        return outcomes

    def _key(self, delivery: Delivery) -> bytes | None:
        """The ordering key the delivery was scheduled by (None: not ordered)."""
        if self._keys is None:
            return None
        key = self._keys.key(delivery)
        return key if isinstance(key, bytes) else None

    async def _screen(self, delivery: Delivery) -> QueueMessage[Any] | SetAside:
        if self._keys is None:
            return await self._admission.screen(delivery)
        return await self._admission.screen(delivery, self._keys.key(delivery))

    async def _process(
        self, delivery: Delivery, handler: DbHandler | Handler, lease: ConnectionLease | None
    ) -> Outcome:
        screened = await self._screen(delivery)
        if isinstance(screened, SetAside):
            return _SET_ASIDE[screened]
        return await self._process_admitted(delivery, screened, handler, lease)

    async def _batch(
        self, batch: list[Delivery], handler: DbHandler | Handler, lease: ConnectionLease
    ) -> list[Outcome]:
        """Batch mode: all messages in one transaction, one COMMIT, acks together. If the
        batch fails, it is rolled back and its messages are handled one by one, so one
        bad message costs the batch a retry, not the others their delivery. The batch
        holds a key's messages in stream order; under key ordering a message whose
        predecessor in the batch could not be set aside waits (KEPT)."""
        outcomes = [Outcome.DONE] * len(batch)
        admitted: list[tuple[int, QueueMessage[Any]]] = []
        blocked: set[bytes] = set()
        for index, delivery in enumerate(batch):
            key = self._key(delivery)
            if key is not None and key in blocked:
                outcomes[index] = Outcome.KEPT
                continue
            screened = await self._screen(delivery)
            if isinstance(screened, QueueMessage):
                admitted.append((index, screened))
                continue
            outcomes[index] = _SET_ASIDE[screened]
            if screened is SetAside.KEPT and key is not None:
                blocked.add(key)
        if not admitted:
            return outcomes
        deliveries = [batch[index] for index, _ in admitted]
        messages = [message for _, message in admitted]
        started = time.perf_counter()
        try:
            await self._transactions(deliveries, messages, handler, lease)
        except Exception as exc:
            if self._failures.not_the_messages_fault(exc, lease):
                await self._failures.not_settled(
                    deliveries, exc, lease
                )  # nothing to learn one by one
                for index, _ in admitted:
                    outcomes[index] = Outcome.KEPT
                return outcomes
            _log.info("batch of %d failed (%r); handling its messages one by one", len(batch), exc)
            singles = await self._in_order(deliveries, messages, handler, lease)
            for (index, _), outcome in zip(admitted, singles, strict=True):
                outcomes[index] = outcome
        finally:
            self._recorder.record_handler_time(time.perf_counter() - started)
        return outcomes

    # -- one message -------------------------------------------------------------------

    async def _process_admitted(
        self,
        delivery: Delivery,
        message: QueueMessage[Any],
        handler: DbHandler | Handler,
        lease: ConnectionLease | None,
    ) -> Outcome:
        started = time.perf_counter()
        try:
            with self._message_span(message):
                if lease is None:
                    await self._call(delivery, message, handler)
                else:
                    await self._transactions((delivery,), (message,), handler, lease)
        except Exception as exc:
            return await self._failures.failed(delivery, exc, lease)
        finally:
            self._recorder.record_handler_time(time.perf_counter() - started)
        return Outcome.DONE

    async def _transactions(
        self,
        deliveries: Sequence[Delivery],
        messages: Sequence[QueueMessage[Any]],
        handler: DbHandler | Handler,
        lease: ConnectionLease,
    ) -> None:
        """Run the messages' transaction; after a lock conflict, run it again, up to
        ``transaction_retries`` times."""
        failed = 0
        while True:
            try:
                return await self._transaction(deliveries, messages, handler, lease)
            except RETRYABLE_ERRORS as exc:
                failed += 1
                if failed > self.config.transaction_retries:
                    raise
                self._metrics.inc("retries", self._operation, retry_reason(exc))
                _log.debug("%s: running the transaction again after %s", self._operation, exc)
                await asyncio.sleep(jittered_delay(failed, _RETRY_BASE_DELAY, _RETRY_MAX_DELAY))

    async def _call(
        self, delivery: Delivery, message: QueueMessage[Any], handler: DbHandler | Handler
    ) -> None:
        """Without an engine: the handler within its time limit, then the ack."""
        async with self._time_limit(1) or _NO_CONTEXT:
            await cast(Handler, handler)(message)
        self._committed([delivery], 0)

    async def _transaction(
        self,
        deliveries: Sequence[Delivery],
        messages: Sequence[QueueMessage[Any]],
        handler: DbHandler | Handler,
        lease: ConnectionLease,
    ) -> None:
        """Handle the messages in one DbSession (each recorded in the inbox first, if
        there is one) and ack their deliveries once the COMMIT is confirmed.

        ``handler_timeout`` limits the session's start and the body, not the COMMIT (or
        ROLLBACK): the session's ``cleanup_timeout`` bounds that, and an unanswered
        COMMIT raises CommitOutcomeUnknownError. What decides the ack is the session's
        outcome, so an error or a cancellation (a drain timeout) that arrives once the
        COMMIT is confirmed still acks, and one that arrives before never does."""
        sessions = self._sessions
        if sessions is None or sessions.engine is not lease.engine:
            # COMMIT and ROLLBACK are bounded like the handler, so a frozen database
            # cannot hold a worker much longer than handler_timeout.
            sessions = self._sessions = SessionFactory(
                lease.engine,
                operation=self._operation,
                registry=self._registry,
                cleanup_timeout=self.config.handler_timeout or DEFAULT_CLEANUP_TIMEOUT,
            )
        session = sessions.new(lease)
        duplicates = 0
        limit = self._time_limit(len(deliveries))
        try:
            async with limit or _NO_CONTEXT, session:
                try:
                    if len(messages) == 1:  # its span is already open
                        duplicates = await self._handle_in(session, messages[0], handler)
                    else:
                        for message in messages:
                            with self._message_span(message):
                                duplicates += await self._handle_in(session, message, handler)
                finally:
                    if limit is not None and not limit.expired():
                        limit.reschedule(None)  # COMMIT or ROLLBACK: not the handler's time
                if self._fence is not None:
                    await self._fence.check(session)
                failpoint("consumer.before_commit")
        except Exception as exc:
            if session.outcome is not TransactionOutcome.COMMITTED:
                raise
            _log.warning("%r after a confirmed COMMIT of %s; acking", exc, deliveries[0].id)
        finally:
            if session.outcome is TransactionOutcome.COMMITTED:
                self._committed(deliveries, duplicates)

    async def _handle_in(
        self, session: DbSession, message: QueueMessage[Any], handler: DbHandler | Handler
    ) -> int:
        """Record the message in the inbox and run the handler; 1 for a duplicate."""
        if self._inbox is not None and not await self._inbox.record(
            session, self.config.consumer_group, message
        ):
            return 1
        failpoint("consumer.in_handler")
        await cast(DbHandler, handler)(message, session)
        return 0

    def _committed(self, deliveries: Sequence[Delivery], duplicates: int) -> None:
        """Their transaction committed (or handler returned): queue the acks."""
        self._outage.end()
        failpoint("consumer.after_commit")
        self._recorder.record_duplicates(duplicates)
        for delivery in deliveries:
            self._acks.add(delivery.id)

    def _time_limit(self, messages: int) -> asyncio.Timeout | None:
        timeout = self.config.handler_timeout
        return None if timeout is None else asyncio.timeout(timeout * messages)

    def _message_span(self, message: QueueMessage[Any]) -> contextlib.AbstractContextManager[Any]:
        if not tracing.active():
            return _NO_CONTEXT
        return tracing.message_span(
            message.stream, message.group, message.id, message.fields, message.delivery_count
        )
