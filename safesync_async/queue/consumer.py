"""QueueConsumer: at-least-once consumption of a Redis stream through a consumer group."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, ParamSpec, TypeVar

import anyio
import anyio.abc
from sqlalchemy.ext.asyncio import AsyncEngine

from .._validation import check_int
from ..errors import ConfigurationError, ConsumerGroupMissingError, QueueError
from ..metrics import DEFAULT_REGISTRY, RegistryArg, metrics_for
from ._admission import Admission
from ._backoff import Backoff
from ._outages import DatabaseOutage
from ._policy import StreamPolicy
from ._processing import DbHandler, Handler, InboxStore, TransactionFence
from ._run import ClaimSettings, ConsumerParts, ConsumerRun
from ._statistics import ConsumerRecorder, ConsumerStatistics
from ._streams import GroupStream, StreamOperations
from .client import RedisClient, ServerInfo, describe_servers, is_cluster
from .config import QueueConfig
from .keys import check_same_slot
from .models import QueueMessage
from .readiness import ConsumerReadiness

__all__ = ["ConsumerStatistics", "DbHandler", "Handler", "InboxStore", "QueueConsumer"]

_log = logging.getLogger("safesync_async.queue.consumer")
_T = TypeVar("_T")
_P = ParamSpec("_P")


class QueueConsumer:
    """Consumes a stream through a consumer group: fetch, handle, commit, then ack.

    ``await consumer.run(handler, engine=engine)`` runs ``handler(message, session)``
    inside a :class:`DbSession` for each entry, up to ``config.concurrency`` at once,
    and acknowledges an entry only after its transaction committed (acks are batched).
    Without ``engine``, ``handler(message)`` is called and acked when it returns.

    What the consumer guarantees:

    * **At-least-once.** An entry is acked only after its COMMIT was confirmed (also
      when a timeout or a cancellation arrives during the COMMIT). A failed handler
      leaves it pending; it is claimed again after ``claim_min_idle_ms`` (by this or
      another consumer) and dead-lettered after ``max_deliveries`` deliveries. Pair it
      with an inbox for effectively-once effects.
    * **Outages spend nothing.** A database outage (``DatabaseUnavailableError``
      anywhere in the failure's chain) keeps the entry pending without counting the
      delivery and holds reads back; Redis connection losses and refusals (OOM, a
      read-only replica) are waited out with exponential backoff, at start-up too.
    * **No poison can stop the loop.** Undecodable, oversized and deleted-while-pending
      entries are dead-lettered (or recorded as tombstones) and acked.
    * **Recovery in the loop.** Entries idle longer than ``claim_min_idle_ms`` are
      claimed with XAUTOCLAIM, following its cursor through the whole pending list;
      entries this consumer holds are kept from looking idle as long as it owns them.
    * **A vanished group** (or a stream deleted under a blocking read) is recreated
      (counted) or reported, per ``on_missing_group``.
    * **Key ordering, on request.** With ``ordering="key"`` messages with the same
      ordering key are handled one at a time, in stream order, within this consumer,
      while different keys run concurrently; a failed message is retried in place and
      its key's later messages wait for it.
    * **Graceful stop.** :meth:`stop` (or SIGTERM via ``install_signal_handlers``):
      no new reads, running handlers get ``drain_timeout`` seconds, every committed
      entry is acked, entries read but not started are handed back so other consumers
      can claim them at once, then ``run`` returns.
    * **One error.** ``run`` raises a :class:`SafeSyncError` subclass (never an
      exception group), or with ``stop_on_error`` the handler's own exception.

    The manual API of the seed library is kept: :meth:`next`, :meth:`iter_messages`,
    :meth:`ack`, :meth:`claim_stale`, :meth:`run_claim_stale`, :meth:`stop`.

    A consumer runs one loop at a time; start one consumer per worker task/process.
    ``redis`` is a standalone or a Redis Cluster client (see
    :func:`~safesync_async.create_redis_client`); on a cluster an explicit
    ``dead_letter_stream`` must share the stream's hash slot (:class:`ConfigurationError`
    otherwise). ``stream_operations`` replaces the Redis commands on the stream (tests
    give an in-memory stream); by default they go to ``redis``. ``fence`` is checked in
    every handler transaction before its COMMIT (partitioned streams use it to refuse a
    former owner's commits; see :class:`~safesync_async.PartitionedConsumer`).
    """

    def __init__(
        self,
        redis: RedisClient,
        config: QueueConfig,
        *,
        inbox: InboxStore | None = None,
        registry: RegistryArg = DEFAULT_REGISTRY,
        stream_operations: StreamOperations | None = None,
        fence: TransactionFence | None = None,
    ) -> None:
        if not isinstance(config, QueueConfig):
            raise ConfigurationError("QueueConsumer needs a QueueConfig")
        if is_cluster(redis):
            check_same_slot(config.stream_key, config.dead_letters, "dead_letter_stream")
        self.config = config
        self.redis = redis
        streams = stream_operations or GroupStream(
            redis, config.stream_key, config.consumer_group, config.consumer_name
        )
        #: Whether this consumer can do its work right now (its group exists, its loops
        #: run, neither Redis nor the database is in an outage): for readiness probes.
        self.readiness = ConsumerReadiness()
        recorder = ConsumerRecorder(
            metrics_for(registry), config.stream_key, config.consumer_group, self.readiness
        )
        backoff = Backoff(config.reconnect_initial_delay, config.reconnect_max_delay)
        self._parts = ConsumerParts(
            config=config,
            streams=streams,
            recorder=recorder,
            admission=Admission(config, streams, recorder),
            outage=DatabaseOutage(backoff, self.readiness),
            policy=StreamPolicy(config, streams, recorder),
            inbox=inbox,
            registry=registry,
            fence=fence,
        )
        self._run: ConsumerRun | None = None
        self._stopping = False
        self._prepared = False
        self._server: ServerInfo | None = None
        self._own_pending_cursor: str | None = "0"
        self._manual_claim_cursor = "0-0"

    # -- running -------------------------------------------------------------------

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
        config = self.config
        claim = (
            ClaimSettings(config.claim_min_idle_ms, config.claim_interval_ms, config.claim_count)
            if config.claim_interval_ms is not None
            else None
        )
        await self._serve(handler, engine, read_new=True, claim=claim, task_status=task_status)

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
        runner = asyncio.create_task(self.run(handler, engine=engine))
        try:
            while not runner.done() and not await self._drained():
                await asyncio.wait([runner], timeout=poll_interval)
            self.stop()
            await runner
        finally:
            if not runner.done():
                runner.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await runner

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
        claim = ClaimSettings(
            check_int("min_idle_ms", min_idle_ms, minimum=0),
            check_int("claim_interval_ms", claim_interval_ms, minimum=1),
            check_int("max_claim_count", max_claim_count, minimum=1),
        )
        await self._serve(handler, engine, read_new=False, claim=claim, task_status=task_status)

    async def _serve(
        self,
        handler: DbHandler | Handler,
        engine: AsyncEngine | None,
        *,
        read_new: bool,
        claim: ClaimSettings | None,
        task_status: anyio.abc.TaskStatus[None],
    ) -> None:
        if self._run is not None:
            raise QueueError("this QueueConsumer is already running; start one per worker")
        run = self._run = ConsumerRun(self._parts, handler, engine, read_new=read_new, claim=claim)
        if self._stopping:
            run.request_stop()
        inbox = self._parts.inbox
        check_inbox = getattr(inbox, "check_table", None) if engine is not None else None

        async def prepare() -> None:
            await self._prepare_once()
            if check_inbox is not None:  # text key columns would merge distinct messages
                await check_inbox(engine)

        try:
            await run.serve(prepare, task_status, servers=describe_servers(self.redis, engine))
        finally:
            self._run = None
            self._stopping = False

    def stop(self) -> None:
        """Request a graceful stop; safe from signal handlers and other threads."""
        self._stopping = True
        run = self._run
        if run is not None:
            run.request_stop()

    @property
    def stopping(self) -> bool:
        """True once :meth:`stop` was called."""
        return self._stopping

    def statistics(self) -> ConsumerStatistics:
        """The consumer's counters, and whether the database or Redis is down now."""
        run = self._run
        return self._parts.recorder.snapshot(
            in_flight=len(run.in_flight) if run is not None else 0,
            ack_waiting=run.acks.waiting if run is not None else 0,
            database_unavailable=self._parts.outage.active,
        )

    async def _drained(self) -> bool:
        run = self._run
        if not self._prepared or run is None or len(run.in_flight) or run.acks.waiting:
            return False
        streams = self._parts.streams
        try:
            group = await streams.group_info()
            last_id = await streams.last_generated_id()
        except QueueError:
            return False
        return group is not None and group.pending == 0 and group.last_delivered_id == last_id

    async def _prepare_once(self) -> None:
        """Check the client and server (once), then create the group if it is missing."""
        if self._server is None:
            self._server = await self._parts.streams.inspect_server(self.config.block_ms)
            if self._server.persistence == "none":
                _log.warning(
                    "Redis persistence is off: a restart loses the stream and its consumer "
                    "groups (enable appendonly for durable queues)"
                )
        await self._parts.streams.ensure_group(self.config.start_id)
        self.readiness.group_exists()
        self._prepared = True

    # -- the manual API ------------------------------------------------------------

    async def next(self, block_ms: int | None = None) -> QueueMessage[Any] | None:
        """One message: this consumer's own pending entries first, then new ones.

        Waits up to ``block_ms`` (default ``config.block_ms``); ``None`` if nothing came.
        Poison entries met on the way are dead-lettered, never returned.
        """
        await self._prepare_manual()
        streams = self._parts.streams
        block = self.config.block_ms if block_ms is None else block_ms
        while True:
            if self._own_pending_cursor is not None:
                deliveries = await self._with_group(
                    streams.read_own_pending, self._own_pending_cursor, 1
                )
                self._own_pending_cursor = deliveries[-1].id if deliveries else None
                if not deliveries:
                    continue
            else:
                deliveries = await self._with_group(streams.read_new, 1, block)
                if not deliveries:
                    return None
            self._parts.recorder.record_received(len(deliveries))
            message = await self._parts.admission.admit(deliveries[0])
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
        acked = await self._parts.streams.ack([message.id]) == 1
        if acked:
            self._parts.recorder.record_acks(1, 1, time.perf_counter() - started)
        return acked

    async def claim_stale(
        self, min_idle_ms: int = 60_000, max_claim_count: int = 10
    ) -> list[QueueMessage[Any]]:
        """Claim up to ``max_claim_count`` entries idle longer than ``min_idle_ms``.

        Follows an XAUTOCLAIM cursor across calls, so stale entries behind live ones are
        reached. Poison and deleted entries are dead-lettered / reported, not returned.
        """
        await self._prepare_manual()
        parts = self._parts
        result = await self._with_group(
            parts.streams.claim_idle, min_idle_ms, self._manual_claim_cursor, max_claim_count
        )
        self._manual_claim_cursor = result.next_cursor
        await parts.admission.report_deleted(result.deleted_ids)
        parts.recorder.record_claimed(len(result.deliveries))
        messages = []
        for delivery in result.deliveries:
            message = await parts.admission.admit(delivery)
            if message is not None:
                messages.append(message)
        return messages

    async def _prepare_manual(self) -> None:
        if not self._prepared:
            await self._prepare_once()

    async def _with_group(
        self, command: Callable[_P, Awaitable[_T]], *args: _P.args, **kwargs: _P.kwargs
    ) -> _T:
        """Run a stream command for the manual API, applying the missing-group policy."""
        try:
            return await command(*args, **kwargs)
        except ConsumerGroupMissingError as exc:
            await self._parts.policy.recreate_group(exc)
            return await command(*args, **kwargs)
