"""QueueConsumer: at-least-once consumption of a Redis stream through a consumer group."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import anyio
import anyio.abc
from redis.asyncio import Redis
from sqlalchemy.ext.asyncio import AsyncEngine

from .. import tracing
from .._failpoints import failpoint
from .._shield import run_to_completion
from ..db.lease import ConnectionLease
from ..errors import (
    ConfigurationError,
    ConsumerGroupMissingError,
    QueueConnectionError,
    QueueError,
)
from ..metrics import DEFAULT_REGISTRY, RegistryArg, metrics_for
from .acks import AckBatcher
from .backoff import Backoff
from .client import ServerInfo, check_redis_client, server_info
from .config import QueueConfig
from .errors import redis_errors
from .models import QueueMessage
from .processing import DbHandler, Handler, InboxStore, MessageProcessor
from .readiness import ConsumerReadiness
from .statistics import ConsumerRecorder, ConsumerStatistics
from .streams import Delivery, GroupStream

__all__ = ["ConsumerStatistics", "DbHandler", "Handler", "InboxStore", "QueueConsumer"]

_log = logging.getLogger("safesync_async.queue.consumer")

# Bound on flushing acks when run() is cancelled rather than stopped.
_CANCEL_FLUSH_SECONDS = 5.0


class QueueConsumer:
    """Consumes a stream through a consumer group: fetch, handle, commit, then ack.

    ``await consumer.run(handler, engine=engine)`` runs ``handler(message, session)``
    inside a :class:`DbSession` for each entry, up to ``config.concurrency`` at once,
    and acknowledges an entry only after its transaction committed (acks are batched).
    Without ``engine``, ``handler(message)`` is called and acked when it returns.

    What the consumer guarantees:

    * **At-least-once.** An entry is acked only after its handler (and commit)
      succeeded. A failed handler leaves it pending; it is claimed again after
      ``claim_min_idle_ms`` (by this or another consumer) and dead-lettered after
      ``max_deliveries`` deliveries. Pair it with an inbox for effectively-once effects.
    * **No poison can stop the loop.** Undecodable, oversized and deleted-while-pending
      entries are dead-lettered (or recorded as tombstones) and acked.
    * **Recovery in the loop.** Entries idle longer than ``claim_min_idle_ms`` are
      claimed with XAUTOCLAIM, following its cursor through the whole pending list.
    * **Redis outages** are ridden out with exponential backoff; after a reconnect the
      consumer re-reads its own pending entries before new ones. A vanished group is
      recreated (counted) or reported, per ``on_missing_group``.
    * **Graceful stop.** :meth:`stop` (or SIGTERM via ``install_signal_handlers``):
      no new reads, running handlers get ``drain_timeout`` seconds, every committed
      entry is acked, entries read but not started are handed back so other consumers
      can claim them at once, then ``run`` returns.

    The manual API of the seed library is kept: :meth:`next`, :meth:`iter_messages`,
    :meth:`ack`, :meth:`claim_stale`, :meth:`run_claim_stale`, :meth:`stop`.

    A consumer runs one loop at a time; start one consumer per worker task/process.
    ``consumer.readiness`` answers health probes (see :class:`ConsumerReadiness`).
    """

    def __init__(
        self,
        redis: Redis,
        config: QueueConfig,
        *,
        inbox: InboxStore | None = None,
        registry: RegistryArg = DEFAULT_REGISTRY,
    ) -> None:
        if not isinstance(config, QueueConfig):
            raise ConfigurationError("QueueConsumer needs a QueueConfig")
        self.config = config
        self.redis = redis
        self._streams = GroupStream(
            redis, config.stream_key, config.consumer_group, config.consumer_name
        )
        self._metrics = metrics_for(registry)
        self._recorder = ConsumerRecorder(self._metrics, config.stream_key, config.consumer_group)
        self.readiness = ConsumerReadiness()
        self._processor = MessageProcessor(
            config,
            self._streams,
            self._recorder,
            inbox=inbox,
            registry=registry,
            on_fatal=self._fail,
            readiness=self.readiness,
        )
        self._stop_requested: asyncio.Event | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stopping = False
        self._running = False
        self._prepared = False
        self._failure: BaseException | None = None
        self._server: ServerInfo | None = None
        # Entries read or claimed and not finished: id -> when their idle time was reset.
        self._outstanding: dict[str, float] = {}
        self._slots_freed: asyncio.Event | None = None
        self._own_pending_cursor: str | None = "0"
        self._manual_claim_cursor = "0-0"

    # -- public API ----------------------------------------------------------------

    async def run(
        self,
        handler: DbHandler | Handler,
        *,
        engine: AsyncEngine | None = None,
        task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED,
    ) -> None:
        """Consume until :meth:`stop` is called (or the task is cancelled).

        ``handler(message, session)`` with ``engine``; ``handler(message)`` without.
        Usable with ``await task_group.start(consumer.run, handler)``: it reports started
        once the group exists and the loops are running.
        """
        await self._serve(
            handler,
            engine,
            read_new=True,
            claim=(
                (
                    self.config.claim_min_idle_ms,
                    self.config.claim_interval_ms,
                    self.config.claim_count,
                )
                if self.config.claim_interval_ms is not None
                else None
            ),
            task_status=task_status,
        )

    async def run_until_drained(
        self,
        handler: DbHandler | Handler,
        *,
        engine: AsyncEngine | None = None,
        poll_interval: float = 0.05,
    ) -> None:
        """Like :meth:`run`, but stop gracefully once the group has nothing left: every
        entry delivered (no lag), none pending, nothing in flight. For batch jobs, tests
        and examples; bound it with ``asyncio.timeout`` if messages may keep failing."""
        async with asyncio.TaskGroup() as tasks:
            runner = tasks.create_task(self.run(handler, engine=engine))
            while not runner.done():
                if await self._drained():
                    break
                await asyncio.sleep(poll_interval)
            self.stop()

    async def _drained(self) -> bool:
        acks = self._processor.acks
        if not self._prepared or self._outstanding or (acks and acks.waiting):
            return False
        try:
            with redis_errors("XINFO GROUPS", self.config.stream_key):
                groups = await self.redis.xinfo_groups(self.config.stream_key)
                last_id = (await self.redis.xinfo_stream(self.config.stream_key))[
                    "last-generated-id"
                ]
        except QueueError:
            return False
        for group in groups:
            if group["name"] in (self.config.consumer_group, self.config.consumer_group.encode()):
                return int(group["pending"]) == 0 and group["last-delivered-id"] == last_id
        return False

    async def run_claim_stale(
        self,
        handler: DbHandler | Handler,
        *,
        engine: AsyncEngine | None = None,
        min_idle_ms: int = 60_000,
        claim_interval_ms: int = 5_000,
        max_claim_count: int = 10,
        task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED,
    ) -> None:
        """A dedicated recovery worker: only claims entries idle longer than
        ``min_idle_ms`` (from any consumer) and processes them like :meth:`run`."""
        for name, value, minimum in (
            ("min_idle_ms", min_idle_ms, 0),
            ("claim_interval_ms", claim_interval_ms, 1),
            ("max_claim_count", max_claim_count, 1),
        ):
            if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
                raise ConfigurationError(f"{name} must be an int >= {minimum}, got {value!r}")
        await self._serve(
            handler,
            engine,
            read_new=False,
            claim=(min_idle_ms, claim_interval_ms, max_claim_count),
            task_status=task_status,
        )

    def stop(self) -> None:
        """Request a graceful stop; safe from signal handlers and other threads."""
        self._stopping = True
        loop, event = self._loop, self._stop_requested
        if loop is None or event is None or loop.is_closed():
            return
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is loop:
            event.set()
        else:
            loop.call_soon_threadsafe(event.set)

    @property
    def stopping(self) -> bool:
        """True once :meth:`stop` was called."""
        return self._stopping

    def statistics(self) -> ConsumerStatistics:
        acks = self._processor.acks
        return self._recorder.snapshot(
            in_flight=len(self._outstanding), ack_waiting=acks.waiting if acks else 0
        )

    async def next(self, block_ms: int | None = None) -> QueueMessage[Any] | None:
        """One message: this consumer's own pending entries first, then new ones.

        Waits up to ``block_ms`` (default ``config.block_ms``); ``None`` if nothing came.
        Poison entries met on the way are dead-lettered, never returned.
        """
        await self._prepare_manual()
        block = self.config.block_ms if block_ms is None else block_ms
        while True:
            if self._own_pending_cursor is not None:
                deliveries = await self._with_group(
                    self._streams.read_own_pending, self._own_pending_cursor, 1
                )
                if deliveries:
                    self._own_pending_cursor = deliveries[-1].id
                else:
                    self._own_pending_cursor = None
                    continue
            else:
                deliveries = await self._with_group(self._streams.read_new, 1, block)
                if not deliveries:
                    return None
            self._recorder.record_received(len(deliveries))
            message = await self._processor.admit(deliveries[0])
            if message is not None:
                return message

    async def iter_messages(self, block_ms: int | None = None) -> AsyncIterator[QueueMessage[Any]]:
        """Yield messages until :meth:`stop` is called. Ack each with :meth:`ack`."""
        while not self._stopping:
            message = await self.next(block_ms)
            if message is not None:
                yield message

    async def ack(self, message: QueueMessage[Any]) -> bool:
        """Acknowledge at once; False if the entry was no longer pending for the group."""
        started = time.perf_counter()
        acked = await self._streams.ack([message.id]) == 1
        if acked:
            self._recorder.record_acks(1, 1, time.perf_counter() - started)
        return acked

    async def claim_stale(
        self, min_idle_ms: int = 60_000, max_claim_count: int = 10
    ) -> list[QueueMessage[Any]]:
        """Claim up to ``max_claim_count`` entries idle longer than ``min_idle_ms``.

        Follows an XAUTOCLAIM cursor across calls, so stale entries behind live ones are
        reached. Poison and deleted entries are dead-lettered / reported, not returned.
        """
        await self._prepare_manual()
        result = await self._with_group(
            self._streams.claim_idle, min_idle_ms, self._manual_claim_cursor, max_claim_count
        )
        self._manual_claim_cursor = result.next_cursor
        await self._processor.report_deleted(result.deleted_ids)
        self._recorder.record_claimed(len(result.deliveries))
        messages = []
        for delivery in result.deliveries:
            message = await self._processor.admit(delivery)
            if message is not None:
                messages.append(message)
        return messages

    # -- the loop ------------------------------------------------------------------

    async def _serve(
        self,
        handler: DbHandler | Handler,
        engine: AsyncEngine | None,
        *,
        read_new: bool,
        claim: tuple[int, int, int] | None,
        task_status: anyio.abc.TaskStatus[None],
    ) -> None:
        if self._running:
            raise QueueError("this QueueConsumer is already running; start one per worker")
        self._running = True
        self._loop = asyncio.get_running_loop()
        stop_requested = self._stop_requested = asyncio.Event()
        self._slots_freed = asyncio.Event()
        if self._stopping:
            stop_requested.set()
        concurrency = self._effective_concurrency(engine)
        limit = self.config.read_ahead_limit(concurrency)
        work: asyncio.Queue[Delivery | None] = asyncio.Queue()
        acks = self._processor.acks = AckBatcher(
            self._streams,
            self._new_backoff(),
            on_acked=self._recorder.record_acks,
            on_connection_error=self._recorder.record_connection_error,
        )
        draining = False
        untrack_in_flight = self._recorder.track_in_flight(self._outstanding.__len__)
        try:
            if not await self._prepare(stop_requested):
                return
            async with asyncio.TaskGroup() as tasks:
                ack_task = tasks.create_task(acks.run())
                feeders = []
                if read_new:
                    feeders.append(tasks.create_task(self._read_loop(work, limit)))
                if claim is not None:
                    feeders.append(tasks.create_task(self._claim_loop(work, limit, *claim)))
                protect_ms = claim[0] if claim is not None else self.config.claim_min_idle_ms
                feeders.append(tasks.create_task(self._keep_alive_loop(protect_ms)))
                workers = [
                    tasks.create_task(self._work_loop(work, handler, engine, lambda: draining))
                    for _ in range(concurrency)
                ]
                task_status.started()
                self.readiness.loops_started()
                await stop_requested.wait()
                self.readiness.loops_stopped()
                draining = True
                for feeder in feeders:
                    feeder.cancel()
                for _ in workers:
                    work.put_nowait(None)
                _done, late = await asyncio.wait(workers, timeout=self.config.drain_timeout)
                for worker in late:
                    _log.warning("drain timeout: cancelling a handler that is still running")
                    worker.cancel()
                acks.close()
                await ack_task
            await self._hand_back_unfinished()
        except asyncio.CancelledError:
            await run_to_completion(self._flush_acks_after_cancel(acks))
            raise
        finally:
            self.readiness.loops_stopped()
            self._running = False
            self._stopping = False
            self._processor.acks = None
            self._outstanding.clear()
            untrack_in_flight()
        failure, self._failure = self._failure, None
        if failure is not None:
            raise failure

    async def _flush_acks_after_cancel(self, acks: AckBatcher) -> None:
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

    def _effective_concurrency(self, engine: AsyncEngine | None) -> int:
        wanted = self.config.concurrency
        if engine is None:
            return wanted
        pool = engine.pool
        size = getattr(pool, "size", None)
        overflow = getattr(pool, "_max_overflow", None)
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

    async def _prepare(self, stop_requested: asyncio.Event) -> bool:
        """Check the client and server, create the group, waiting out connection errors;
        False if a stop was requested before Redis could be reached."""
        backoff = self._new_backoff()
        while not stop_requested.is_set():
            try:
                await self._prepare_once()
                self.readiness.redis_ok()
                return True
            except QueueConnectionError as exc:
                self.readiness.redis_failed(exc)
                self._recorder.record_connection_error(exc)
                await backoff.sleep(stop_requested)
        return False

    async def _prepare_once(self) -> None:
        if self._server is None:
            check_redis_client(self.redis, block_ms=self.config.block_ms)
            self._server = await server_info(self.redis)
            if self._server.persistence == "none":
                _log.warning(
                    "Redis persistence is off: a restart loses the stream and its consumer "
                    "groups (enable appendonly for durable queues)"
                )
        await self._streams.ensure_group(self.config.start_id)
        self.readiness.group_exists()
        self._prepared = True

    async def _prepare_manual(self) -> None:
        if not self._prepared:
            await self._prepare_once()

    async def _read_loop(self, work: asyncio.Queue[Delivery | None], limit: int) -> None:
        """Fill free capacity: own pending entries first (at start, after reconnects),
        then new ones, in batches sized to what is free."""
        backoff = self._new_backoff()
        cursor: str | None = "0"
        while True:
            free = await self._wait_for_capacity(limit)
            await self._processor.wait_for_database()
            try:
                if cursor is not None:
                    deliveries = await self._streams.read_own_pending(cursor, free)
                    cursor = deliveries[-1].id if deliveries else None
                    deliveries = [d for d in deliveries if d.id not in self._outstanding]
                else:
                    deliveries = await self._read_new(free)
            except QueueConnectionError as exc:
                self.readiness.redis_failed(exc)
                self._recorder.record_connection_error(exc)
                await backoff.sleep()
                cursor = "0"
                continue
            except ConsumerGroupMissingError as exc:
                if not await self._group_missing(exc):
                    return self._fail(exc)
                cursor = "0"
                continue
            backoff.reset()
            self.readiness.redis_ok()
            self._enqueue(work, deliveries)

    async def _claim_loop(
        self,
        work: asyncio.Queue[Delivery | None],
        limit: int,
        min_idle_ms: int,
        interval_ms: int,
        count: int,
    ) -> None:
        """Follow an XAUTOCLAIM cursor through the whole pending list, pausing
        ``interval_ms`` after each complete pass (or when at capacity)."""
        backoff = self._new_backoff()
        cursor = "0-0"
        while True:
            await self._processor.wait_for_database()
            free = min(limit - len(self._outstanding), count)
            if free > 0:
                try:
                    with tracing.messaging_span(
                        "claim", self.config.stream_key, group=self.config.consumer_group
                    ):
                        result = await self._streams.claim_idle(min_idle_ms, cursor, free)
                except QueueConnectionError as exc:
                    self.readiness.redis_failed(exc)
                    self._recorder.record_connection_error(exc)
                    await backoff.sleep()
                    continue
                except ConsumerGroupMissingError as exc:
                    if not await self._group_missing(exc):
                        return self._fail(exc)
                    continue
                backoff.reset()
                self.readiness.redis_ok()
                cursor = result.next_cursor
                await self._processor.report_deleted(result.deleted_ids)
                fresh = [d for d in result.deliveries if d.id not in self._outstanding]
                self._recorder.record_claimed(len(fresh))
                self._enqueue(work, fresh)
                if cursor != "0-0":
                    continue
                await self._update_lag()
            await asyncio.sleep(interval_ms / 1000)

    async def _keep_alive_loop(self, min_idle_ms: int) -> None:
        """Keep entries this consumer holds from looking abandoned: before they have been
        idle for half of ``min_idle_ms``, reset their idle time (XCLAIM ... JUSTID, which
        does not count a delivery). Otherwise an entry waiting in the read-ahead buffer,
        or with a slow handler, would be claimed by another consumer (handled twice) or
        re-claimed by this one (its delivery count inflated toward dead-lettering)."""
        threshold = min_idle_ms / 2000
        interval = max(0.05, min(5.0, threshold / 2))
        while True:
            await asyncio.sleep(interval)
            now = time.monotonic()
            due = [i for i, touched in self._outstanding.items() if now - touched >= threshold]
            if not due:
                continue
            try:
                await self._streams.touch(due)
            except QueueError as exc:
                _log.debug("could not refresh %d in-flight entries: %s", len(due), exc)
                continue
            for entry_id in due:
                if entry_id in self._outstanding:
                    self._outstanding[entry_id] = now

    async def _work_loop(
        self,
        work: asyncio.Queue[Delivery | None],
        handler: DbHandler | Handler,
        engine: AsyncEngine | None,
        draining: Callable[[], bool],
    ) -> None:
        """One worker: messages one after another. While messages are waiting it keeps
        its connection between them (saving the pool round trip; every session still
        ends and resets it); when it runs out of work it gives the connection back."""
        lease = ConnectionLease(engine) if engine is not None else None
        try:
            while not draining():
                if lease is not None and work.empty():
                    await lease.close()
                first = await work.get()
                if first is None or draining():
                    return  # unstarted entries stay pending and are handed back
                batch = self._take_batch(work, first)
                try:
                    if len(batch) == 1 or lease is None:
                        for delivery in batch:
                            await self._processor.process(delivery, handler, lease)
                    else:
                        await self._processor.process_batch(batch, handler, lease)
                finally:
                    for delivery in batch:
                        self._outstanding.pop(delivery.id, None)
                    assert self._slots_freed is not None
                    self._slots_freed.set()
        finally:
            if lease is not None:
                await lease.close()

    async def _read_new(self, count: int) -> list[Delivery]:
        if not tracing.active():
            return await self._streams.read_new(count, self.config.block_ms)
        with tracing.messaging_span(
            "receive", self.config.stream_key, group=self.config.consumer_group
        ) as span:
            deliveries = await self._streams.read_new(count, self.config.block_ms)
            span.set_attribute("messaging.batch.message_count", len(deliveries))
            return deliveries

    def _take_batch(self, work: asyncio.Queue[Delivery | None], first: Delivery) -> list[Delivery]:
        """``first`` plus whatever is already waiting, up to ``batch_size``."""
        batch = [first]
        while len(batch) < self.config.batch_size and not work.empty():
            item = work.get_nowait()
            if item is None:
                work.put_nowait(None)  # another worker's stop signal: leave it
                break
            batch.append(item)
        return batch

    async def _wait_for_capacity(self, limit: int) -> int:
        """Wait until a worthwhile batch (a quarter of the read-ahead) can be read."""
        slots_freed = self._slots_freed
        assert slots_freed is not None
        batch = max(1, limit // 4)
        while limit - len(self._outstanding) < batch:
            slots_freed.clear()
            await slots_freed.wait()
        return limit - len(self._outstanding)

    def _enqueue(self, work: asyncio.Queue[Delivery | None], deliveries: list[Delivery]) -> None:
        if deliveries:
            failpoint("consumer.after_fetch")
        self._recorder.record_received(len(deliveries))
        for delivery in deliveries:
            self._outstanding[delivery.id] = time.monotonic()
            work.put_nowait(delivery)

    # -- bookkeeping -----------------------------------------------------------------

    async def _with_group(self, call: Callable[..., Awaitable[Any]], *args: Any) -> Any:
        """Run a stream command for the manual API, applying the missing-group policy."""
        try:
            return await call(*args)
        except ConsumerGroupMissingError as exc:
            if not await self._group_missing(exc):
                raise
            return await call(*args)

    async def _group_missing(self, exc: ConsumerGroupMissingError) -> bool:
        """Apply ``on_missing_group``; True if the group was recreated."""
        self.readiness.group_missing()
        if self.config.on_missing_group == "fail":
            _log.error("consumer group missing and on_missing_group='fail': %s", exc)
            return False
        _log.error(
            "consumer group %r on %r vanished (Redis restarted without persistence, or the "
            "group was destroyed); recreating it from %r",
            self.config.consumer_group,
            self.config.stream_key,
            self.config.start_id,
        )
        await self._streams.ensure_group(self.config.start_id)
        self.readiness.group_exists()
        self._recorder.record_group_recreated()
        return True

    async def _hand_back_unfinished(self) -> None:
        """Entries still pending for this consumer and not being acked (read ahead and
        never started, or lost in a cancelled read) become claimable by others now."""
        try:
            pending = [
                entry
                for entry in await self._streams.own_pending(10_000)
                if not self._processor.failed_here(entry.id)  # retried after min idle
            ]
            if pending:
                await self._streams.hand_back(pending)
        except QueueError as exc:
            _log.warning("could not hand back unfinished entries: %s", exc)
            return
        self._recorder.record_handed_back(len(pending))
        if pending:
            _log.info("handed back %d unfinished entries", len(pending))

    async def _update_lag(self) -> None:
        if not self._metrics.enabled:
            return
        try:
            with redis_errors("XINFO GROUPS", self.config.stream_key):
                groups = await self.redis.xinfo_groups(self.config.stream_key)
        except QueueError:
            return
        for group in groups:
            name = group.get("name")
            if name in (self.config.consumer_group, self.config.consumer_group.encode()):
                lag = group.get("lag")
                if lag is not None:
                    self._recorder.record_lag(float(lag))

    def _fail(self, exc: BaseException) -> None:
        """Stop the loop; ``run`` raises ``exc`` after draining."""
        if self._failure is None:
            self._failure = exc
        self.stop()

    def _new_backoff(self) -> Backoff:
        return Backoff(self.config.reconnect_initial_delay, self.config.reconnect_max_delay)
