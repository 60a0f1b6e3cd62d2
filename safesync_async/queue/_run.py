"""One ``run()`` of a consumer: its work queue, the entries it holds, its acks, its loops
(read, claim, keep-alive, workers) and the graceful stop that ends them."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass
from typing import Any

import anyio
import anyio.abc
from sqlalchemy.ext.asyncio import AsyncEngine

from .. import tracing
from .._shield import run_to_completion
from ..db.lease import ConnectionLease
from ..errors import QueueError, SafeSyncError
from ..metrics import RegistryArg
from ._acks import AckBatcher
from ._admission import Admission
from ._backoff import Backoff
from ._in_flight import InFlight
from ._ordering import KeyedDispatch
from ._outages import DatabaseOutage
from ._policy import StreamPolicy
from ._processing import DbHandler, Handler, InboxStore, MessageProcessor, TransactionFence
from ._startup import start_up
from ._statistics import ConsumerRecorder
from ._streams import Delivery, StreamOperations
from .config import QueueConfig

__all__ = ["ClaimSettings", "ConsumerParts", "ConsumerRun"]

Task = asyncio.Task[None]

_log = logging.getLogger("safesync_async.queue.consumer")

# Bound on flushing acks when run() is cancelled rather than stopped.
_CANCEL_FLUSH_SECONDS = 5.0
# Most own pending entries handed back at a graceful stop.
_HAND_BACK_LIMIT = 10_000


@dataclass(frozen=True, slots=True)
class ConsumerParts:
    """What outlives one run: the consumer's settings, stream, counters and memory."""

    config: QueueConfig
    streams: StreamOperations
    recorder: ConsumerRecorder
    admission: Admission
    outage: DatabaseOutage
    policy: StreamPolicy
    inbox: InboxStore | None
    registry: RegistryArg
    fence: TransactionFence | None = None

    def backoff(self) -> Backoff:
        return Backoff(self.config.reconnect_initial_delay, self.config.reconnect_max_delay)


@dataclass(frozen=True, slots=True)
class ClaimSettings:
    """In-loop recovery: XAUTOCLAIM entries idle ``min_idle_ms``, ``count`` at a time,
    a full pass every ``interval_ms``."""

    min_idle_ms: int
    interval_ms: int
    count: int


class ConsumerRun:
    """The state and loops of one run. Every loop failure becomes one library error
    (:meth:`fail`): the run stops gracefully and :meth:`serve` raises it, never an
    exception group."""

    def __init__(
        self,
        parts: ConsumerParts,
        handler: DbHandler | Handler,
        engine: AsyncEngine | None,
        *,
        read_new: bool,
        claim: ClaimSettings | None,
    ) -> None:
        self.parts = parts
        self.config = config = parts.config
        self._streams = parts.streams
        self._recorder = parts.recorder
        self._handler = handler
        self._engine = engine
        self._read_new = read_new
        self._claim = claim
        self._concurrency = effective_concurrency(config.concurrency, engine)
        keyed = KeyedDispatch(config, parts.outage) if config.ordering == "key" else None
        self.in_flight = InFlight(config.read_ahead_limit(self._concurrency), parts.recorder, keyed)
        self._own_pending_read = asyncio.Event()  # key ordering: then the claim loop starts
        if keyed is None or not read_new:
            self._own_pending_read.set()
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        self.acks = AckBatcher(parts.streams, parts.backoff(), parts.recorder)
        self._processor = MessageProcessor(
            config,
            parts.streams,
            parts.recorder,
            parts.admission,
            parts.outage,
            self.acks,
            inbox=parts.inbox,
            registry=parts.registry,
            on_fatal=self.fail,
            keys=keyed,
            fence=parts.fence,
        )
        self._draining = False
        self._failure: BaseException | None = None

    # -- control -------------------------------------------------------------------

    def request_stop(self) -> None:
        """Graceful stop; safe from signal handlers and other threads."""
        if self._loop.is_closed():
            return
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is self._loop:
            self._stop.set()
        else:
            self._loop.call_soon_threadsafe(self._stop.set)

    def fail(self, exc: BaseException) -> None:
        """Stop the run; :meth:`serve` raises ``exc`` (the first one) after draining."""
        if self._failure is None:
            self._failure = exc
        self._stop.set()

    # -- the run -------------------------------------------------------------------

    async def serve(
        self,
        prepare: Callable[[], Awaitable[None]],
        task_status: anyio.abc.TaskStatus[None],
        *,
        servers: str,
    ) -> None:
        """Start up (``prepare``, waiting out outages of ``servers``), run the loops until
        stopped, drain, hand back what was not started."""
        untrack_in_flight = self._recorder.track_in_flight(self.in_flight.__len__)
        try:
            if not await self._prepare(prepare, servers):
                return
            async with asyncio.TaskGroup() as tasks:

                def start(name: str, loop: Callable[[], Coroutine[Any, Any, None]]) -> Task:
                    return tasks.create_task(self._guarded(name, loop))

                ack_task = start("ack loop", self.acks.run)
                feeders = []
                if self._read_new:
                    feeders.append(start("read loop", self._read_loop))
                protect_ms = self.config.claim_min_idle_ms
                if (claim := self._claim) is not None:
                    feeders.append(start("claim loop", lambda: self._claim_loop(claim)))
                    protect_ms = claim.min_idle_ms
                keep_alive = start("keep-alive loop", lambda: self._keep_alive_loop(protect_ms))
                workers = [start("worker", self._work_loop) for _ in range(self._concurrency)]
                task_status.started()
                self._recorder.readiness.loops_started()
                await self._stop.wait()
                self._recorder.readiness.loops_stopped()
                await self._drain(feeders, workers, keep_alive, ack_task)
            await self._hand_back_unfinished()
        except asyncio.CancelledError:
            await run_to_completion(self._flush_acks_after_cancel())
            raise
        finally:
            self._recorder.readiness.loops_stopped()
            untrack_in_flight()
        if self._failure is not None:
            raise self._failure

    async def _prepare(self, prepare: Callable[[], Awaitable[None]], servers: str) -> bool:
        """Check the client and server and create the group, waiting out outages within
        ``startup_timeout``; False if stopped before it could be done."""
        return await start_up(
            prepare,
            stop=self._stop,
            backoff=self.parts.backoff(),
            recorder=self._recorder,
            startup_timeout=self.config.startup_timeout,
            where=servers,
        )

    async def _guarded(self, name: str, loop: Callable[[], Coroutine[Any, Any, None]]) -> None:
        """Run ``loop()`` (created here, so a task cancelled before it starts leaves no
        coroutine unawaited); its failure stops the run."""
        try:
            await loop()
        except Exception as exc:
            if not isinstance(exc, SafeSyncError):
                wrapped = QueueError(f"the consumer's {name} failed unexpectedly: {exc!r}")
                wrapped.__cause__ = exc
                exc = wrapped
            _log.error("stopping the consumer of %r: %s", self.config.stream_key, exc)
            self.fail(exc)

    async def _drain(
        self,
        feeders: list[asyncio.Task[None]],
        workers: list[asyncio.Task[None]],
        keep_alive: asyncio.Task[None],
        ack_task: asyncio.Task[None],
    ) -> None:
        """No new reads; running handlers get ``drain_timeout``, then are cancelled (a
        COMMIT under way still completes and is acked if confirmed); the keep-alive runs
        until the last handler is done; then what is committed is acked."""
        self._draining = True
        for feeder in feeders:
            feeder.cancel()
        self.in_flight.stop_workers(len(workers))
        _done, late = await asyncio.wait(workers, timeout=self.config.drain_timeout)
        if late:
            _log.warning("drain timeout: cancelling %d handler(s) still running", len(late))
            for worker in late:
                worker.cancel()
            await asyncio.wait(late)
        keep_alive.cancel()
        self.acks.close()
        await ack_task

    async def _flush_acks_after_cancel(self) -> None:
        acks = self.acks
        try:
            async with asyncio.timeout(_CANCEL_FLUSH_SECONDS):
                while acks.waiting:
                    await acks.flush_once()
        except (TimeoutError, QueueError):
            pass
        if acks.waiting:
            _log.warning(
                "cancelled with %d committed message(s) not acked; they will be redelivered",
                acks.waiting,
            )

    async def _hand_back_unfinished(self) -> None:
        """Entries still pending for this consumer and not being acked (read ahead and
        never started, or lost in a cancelled read) become claimable by others now."""
        try:
            pending = self.in_flight.dispatch.to_hand_back(
                await self._streams.own_pending(_HAND_BACK_LIMIT), self.parts.admission.failed_here
            )
            await self._streams.hand_back(pending)
        except QueueError as exc:
            _log.warning("could not hand back unfinished entries: %s", exc)
            return
        self._recorder.record_handed_back(len(pending))
        if pending:
            _log.info("handed back %d unfinished entries", len(pending))

    # -- the loops -----------------------------------------------------------------

    async def _read_loop(self) -> None:
        """Fill free capacity: own pending entries first (at start, after reconnects),
        then new ones, in batches sized to what is free. Entries held, or committed and
        waiting for their ack, are not taken twice."""
        backoff = self.parts.backoff()
        cursor: str | None = "0"
        while True:
            free = await self.in_flight.wait_for_capacity()
            await self.parts.outage.wait()
            try:
                if cursor is not None:
                    deliveries = await self._streams.read_own_pending(cursor, free)
                    cursor = deliveries[-1].id if deliveries else None
                    held, acks = self.in_flight, self.acks
                    deliveries = [d for d in deliveries if d.id not in held and d.id not in acks]
                    if cursor is None:
                        self._own_pending_read.set()
                else:
                    deliveries = await self._receive(free)
            except QueueError as exc:
                await self.parts.policy.recover(exc, backoff)
                cursor = "0"
                continue
            backoff.reset()
            self._recorder.record_redis_available()
            self.in_flight.add(deliveries)

    async def _receive(self, count: int) -> list[Delivery]:
        if not tracing.active():
            return await self._streams.read_new(count, self.config.block_ms)
        with tracing.messaging_span(
            "receive", self.config.stream_key, group=self.config.consumer_group
        ) as span:
            deliveries = await self._streams.read_new(count, self.config.block_ms)
            span.set_attribute("messaging.batch.message_count", len(deliveries))
            return deliveries

    async def _claim_loop(self, claim: ClaimSettings) -> None:
        """Follow an XAUTOCLAIM cursor through the whole pending list, pausing
        ``interval_ms`` after each complete pass (or when at capacity)."""
        backoff = self.parts.backoff()
        cursor = "0-0"
        await self._own_pending_read.wait()
        while True:
            await self.parts.outage.wait()
            free = min(self.in_flight.free, claim.count)
            if free > 0:
                try:
                    with tracing.messaging_span(
                        "claim", self.config.stream_key, group=self.config.consumer_group
                    ):
                        result = await self._streams.claim_idle(claim.min_idle_ms, cursor, free)
                except QueueError as exc:
                    await self.parts.policy.recover(exc, backoff)
                    continue
                backoff.reset()
                self._recorder.record_redis_available()
                cursor = result.next_cursor
                await self.parts.admission.report_deleted(result.deleted_ids)
                fresh = [d for d in result.deliveries if d.id not in self.in_flight]
                self._recorder.record_claimed(len(fresh))
                self.in_flight.add(fresh)
                if cursor != "0-0":
                    continue
                await self._update_lag()
            await asyncio.sleep(claim.interval_ms / 1000)

    async def _update_lag(self) -> None:
        if not self._recorder.metrics_enabled:
            return
        try:
            group = await self._streams.group_info()
        except QueueError:
            return
        if group is not None and group.lag is not None:
            self._recorder.record_lag(float(group.lag))

    async def _keep_alive_loop(self, min_idle_ms: int) -> None:
        """Keep entries this consumer holds from looking abandoned: before they have been
        idle for half of ``min_idle_ms``, reset their idle time (XCLAIM ... JUSTID, which
        does not count a delivery) if this consumer still owns them. Otherwise an entry
        waiting in the read-ahead buffer, or with a slow handler, would be claimed by
        another consumer (handled twice) or re-claimed by this one (its delivery count
        inflated toward dead-lettering). Runs until the last handler has finished."""
        threshold = min_idle_ms / 2000
        interval = max(0.05, min(5.0, threshold / 2))
        while True:
            await asyncio.sleep(interval)
            now = time.monotonic()
            due = self.in_flight.due(threshold, now)
            if not due:
                continue
            try:
                touched = set(await self._streams.touch(due))
            except QueueError as exc:
                _log.debug("could not refresh %d in-flight entries: %s", len(due), exc)
                continue
            if len(touched) < len(due):
                _log.info(
                    "%d held entries are no longer this consumer's (claimed elsewhere, or "
                    "acked); their idle time is left alone",
                    len(due) - len(touched),
                )
            self.in_flight.refreshed(due, now)

    async def _work_loop(self) -> None:
        """One worker: messages one after another. While messages are waiting it keeps
        its connection between them (saving the pool round trip; every session still
        ends and resets it); when it runs out of work it gives the connection back."""
        in_flight = self.in_flight
        lease = ConnectionLease(self._engine) if self._engine is not None else None
        try:
            while not self._draining:
                if lease is not None and in_flight.queue_empty:
                    await lease.close()
                first = await in_flight.next()
                if first is None or self._draining:
                    return  # unstarted entries stay pending and are handed back
                batch = in_flight.take_batch(first, self.config.batch_size)
                outcomes = None
                try:
                    outcomes = await self._processor.handle(batch, self._handler, lease)
                finally:
                    in_flight.finished(batch, outcomes)
        finally:
            if lease is not None:
                await lease.close()


def effective_concurrency(wanted: int, engine: AsyncEngine | None) -> int:
    """``wanted``, capped by what the engine's pool can serve at once."""
    if engine is None:
        return wanted
    pool = engine.pool
    size = getattr(pool, "size", None)
    overflow = getattr(pool, "_max_overflow", None)  # QueuePool has no public accessor
    if not callable(size) or not isinstance(overflow, int) or overflow < 0:
        return wanted  # unbounded or unknown pool
    capacity = int(size()) + overflow
    if wanted > capacity:
        _log.warning(
            "concurrency=%d exceeds what the engine's pool can serve (%d connections); "
            "running %d handlers at once",
            wanted,
            capacity,
            capacity,
        )
        return capacity
    return wanted
