"""The partitioned consumer: membership, lease upkeep, and one key-ordered
:class:`QueueConsumer` per partition owned."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import Any

from sqlalchemy.ext.asyncio import AsyncEngine

from ..._shield import run_to_completion
from ...errors import (
    ConfigurationError,
    PartitionLeaseLostError,
    QueueError,
    QueueUnavailableError,
    SafeSyncError,
)
from ...metrics import DEFAULT_REGISTRY, RegistryArg, metrics_for
from .._processing import DbHandler, Handler, InboxStore
from ..client import RedisClient
from ..config import QueueConfig
from ..consumer import QueueConsumer
from .fence import EpochFence
from .layout import PartitionedStream
from .leases import Lease, LeaseStore, assignment, check_partition_count
from .ownership import OwnedPartition, PartitionOwnership, member_name
from .stream import LeasedStream

__all__ = ["PartitionOwnership", "PartitionedConsumer"]

_log = logging.getLogger("safesync_async.queue.partitions")

# QueueConfig settings the partitioned consumer sets itself.
_FIXED = ("stream_key", "consumer_group", "consumer_name", "ordering", "claim_interval_ms")
_REGISTER_RETRY_SECONDS = 0.5


class PartitionedConsumer:
    """Consumes a :class:`PartitionedStream` as one member of ``group``.

    The live members divide the partitions among themselves (round robin over their
    sorted names); each partition is consumed by the holder of its lease only, with a
    key-ordered :class:`QueueConsumer` (``concurrency`` workers per partition, one key at a
    time, in stream order). A member renews its leases every ``lease_ttl_ms / 3``; one that
    stops gives its partitions up after draining them, one that dies or pauses loses them
    when ``lease_ttl_ms`` runs out. A new owner first registers its epoch with ``fence``
    (every handler transaction checks it before COMMIT, so a former owner that resumes
    from a pause cannot commit any more), then takes over the pending entries its
    predecessors left, handles them first, then reads new ones.

    ``fence`` is an :class:`EpochFence` whose table exists (``run`` needs an engine
    then), or None to turn fencing off: a paused former owner can then commit after the
    new owner started (only for handlers without a database). ``options`` are
    :class:`QueueConfig` settings for every partition's consumer (``max_deliveries``,
    ``handler_timeout``, ``codec``, ``ordering_key``, ...), except the ones this class
    sets itself.
    """

    def __init__(
        self,
        redis: RedisClient,
        stream: PartitionedStream,
        group: str,
        *,
        inbox: InboxStore | None = None,
        fence: EpochFence | None,
        member: str | None = None,
        lease_ttl_ms: int = 10_000,
        concurrency: int = 4,
        registry: RegistryArg = DEFAULT_REGISTRY,
        **options: Any,
    ) -> None:
        if not isinstance(stream, PartitionedStream):
            raise ConfigurationError("PartitionedConsumer needs a PartitionedStream")
        if fixed := sorted(set(options) & set(_FIXED)):
            raise ConfigurationError(f"PartitionedConsumer sets {', '.join(fixed)} itself")
        if isinstance(lease_ttl_ms, bool) or not isinstance(lease_ttl_ms, int):
            raise ConfigurationError("lease_ttl_ms must be an integer")
        if lease_ttl_ms < 300:
            raise ConfigurationError(f"lease_ttl_ms must be at least 300, not {lease_ttl_ms}")
        self.redis = redis
        self.stream = stream
        self.group = group
        self.member = member or member_name()
        self.lease_ttl_ms = lease_ttl_ms
        self._inbox = inbox
        self._fence = fence
        self._registry = registry
        self._metrics = metrics_for(registry)
        self._labels = (self._metrics.stream_label(stream.name), group)
        self._leases = LeaseStore(redis, stream, group)
        # One consumer configuration per partition: invalid options fail here.
        self._configs = [
            QueueConfig(
                stream_key=key,
                consumer_group=group,
                consumer_name=self.member,
                ordering="key",
                claim_interval_ms=None,
                concurrency=concurrency,
                **options,
            )
            for key in stream.stream_keys()
        ]
        self._owned: dict[int, OwnedPartition] = {}
        self._stop = asyncio.Event()
        self._counts = {"acquired": 0, "released": 0, "lease_losses": 0, "fenced": 0}
        self._ran = False

    # -- public --------------------------------------------------------------------------

    def stop(self) -> None:
        """Stop gracefully: leave the group, drain every partition, release the leases."""
        self._stop.set()

    def ownership(self) -> PartitionOwnership:
        """What this consumer owns now, and its counters."""
        fenced = self._counts["fenced"] + sum(
            o.consumer.statistics().fenced for o in self._owned.values() if o.consumer
        )
        return PartitionOwnership(
            member=self.member,
            owned={p: o.lease.epoch for p, o in sorted(self._owned.items()) if not o.lost},
            acquired=self._counts["acquired"],
            released=self._counts["released"],
            lease_losses=self._counts["lease_losses"],
            fenced=fenced,
        )

    async def run(self, handler: DbHandler | Handler, *, engine: AsyncEngine | None = None) -> None:
        """Take part in the group until :meth:`stop`, then drain and leave; raises if a
        partition's consumer fails for another reason than losing its lease. Cancelled,
        it cancels its partitions' consumers (their transactions roll back, committed
        entries are acked) and releases their leases before re-raising. Runs once."""
        if self._ran:
            raise QueueError("this PartitionedConsumer has run already; create another")
        self._ran = True
        if self._fence is not None:
            if engine is None:
                raise ConfigurationError(
                    "fencing needs the handler's database: pass engine=, or fence=None"
                )
            await self._fence.check_table(engine)
        await check_partition_count(self.redis, self.stream)
        interval = self.lease_ttl_ms / 3000
        failure: BaseException | None = None
        try:
            while not self._stop.is_set() and failure is None:
                await self._tick(handler, engine)
                failure = self._failure()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stop.wait(), interval)
        except BaseException:
            await run_to_completion(self._leave(drain=False))
            raise
        await self._leave(drain=True)
        if failure is not None:
            raise failure

    # -- one round ---------------------------------------------------------------------

    async def _tick(self, handler: DbHandler | Handler, engine: AsyncEngine | None) -> None:
        """Heartbeat, renew, give up what is no longer ours, take what is."""
        try:
            members = await self._leases.heartbeat(self.member, self.lease_ttl_ms)
        except QueueError as exc:
            _log.warning(
                "%s: partitions of %r: heartbeat failed: %s", self.member, self.stream.name, exc
            )
            self._expire_unrenewed()
            return
        await self._renew()
        wanted = set(assignment(members, self.stream.partitions).get(self.member, []))
        for partition, owned in list(self._owned.items()):
            if partition not in wanted and not owned.giving_up:
                _log.info(
                    "%s: partition %d goes to another member: draining it", self.member, partition
                )
                owned.giving_up = True
                owned.stop()
        for partition in sorted(wanted - set(self._owned)):
            try:
                lease = await self._leases.acquire(partition, self.member, self.lease_ttl_ms)
            except QueueError as exc:
                _log.warning("%s: could not acquire partition %d: %s", self.member, partition, exc)
                continue
            if lease is not None:
                self._start(lease, handler, engine)

    async def _renew(self) -> None:
        for partition, owned in list(self._owned.items()):
            if owned.lost:
                continue
            started = time.monotonic()
            try:
                held = await self._leases.renew(owned.lease, self.lease_ttl_ms)
            except QueueError as exc:
                _log.warning(
                    "%s: could not renew the lease of partition %d: %s", self.member, partition, exc
                )
                continue
            if held:
                owned.renewed_at = started
            else:
                self._lose(partition, owned, "taken by another member or expired")
        self._expire_unrenewed()

    def _expire_unrenewed(self) -> None:
        """A lease not renewed for its whole TTL may be someone else's now: stop."""
        deadline = time.monotonic() - self.lease_ttl_ms / 1000
        for partition, owned in list(self._owned.items()):
            if not owned.lost and owned.renewed_at < deadline:
                self._lose(partition, owned, "not renewed within its TTL")

    def _lose(self, partition: int, owned: OwnedPartition, why: str) -> None:
        if owned.lost:
            return
        _log.warning(
            "%s: lost the lease of partition %d (epoch %d): %s",
            self.member,
            partition,
            owned.lease.epoch,
            why,
        )
        owned.lost = True
        self._counts["lease_losses"] += 1
        self._metrics.inc("partition_lease_losses", *self._labels)
        owned.stop()

    def _start(
        self, lease: Lease, handler: DbHandler | Handler, engine: AsyncEngine | None
    ) -> None:
        owned = OwnedPartition(lease, renewed_at=time.monotonic())
        self._owned[lease.partition] = owned
        self._counts["acquired"] += 1
        self._metrics.inc("partition_rebalances", *self._labels, "acquired")
        _log.info("%s: acquired partition %d (epoch %d)", self.member, lease.partition, lease.epoch)
        owned.task = asyncio.create_task(self._consume(owned, handler, engine))

    def _failure(self) -> BaseException | None:
        for owned in self._owned.values():
            task = owned.task
            if task is not None and task.done() and not task.cancelled() and task.exception():
                return task.exception()
        return None

    # -- one partition -----------------------------------------------------------------

    async def _consume(
        self, owned: OwnedPartition, handler: DbHandler | Handler, engine: AsyncEngine | None
    ) -> None:
        """Register the epoch, take over, consume until stopped; then give the lease up."""
        lease = owned.lease
        partition = lease.partition
        config = self._configs[partition]
        try:
            fence = None
            if self._fence is not None and engine is not None:
                if not await self._register(owned, engine):
                    return
                fence = self._fence.bind(
                    config.stream_key,
                    self.group,
                    lease.epoch,
                    on_refused=lambda: self._lose(partition, owned, "a newer owner registered"),
                )
            streams = LeasedStream(
                self.redis,
                config.stream_key,
                self.group,
                self.member,
                lease_key=self.stream.lease_key(partition, self.group),
                lease=lease,
            )
            await streams.ensure_group(config.start_id)
            taken = await streams.take_over()
            if taken:
                _log.info(
                    "%s: partition %d: took over %d pending entries", self.member, partition, taken
                )
            owned.consumer = QueueConsumer(
                self.redis,
                config,
                inbox=self._inbox,
                registry=self._registry,
                stream_operations=streams,
                fence=fence,
            )
            if owned.lost or owned.giving_up or self._stop.is_set():
                return
            await owned.consumer.run(handler, engine=engine)
        except asyncio.CancelledError:
            if not (owned.lost or owned.giving_up or self._stop.is_set()):
                raise
            task = asyncio.current_task()
            if task is not None:
                task.uncancel()  # stopped before it consumed: still give the lease up
        except PartitionLeaseLostError as exc:
            self._lose(partition, owned, str(exc))
        except QueueUnavailableError as exc:  # Redis down while taking over: try again later
            _log.warning("%s: partition %d given up for now: %s", self.member, partition, exc)
        finally:
            if owned.consumer is not None:
                self._counts["fenced"] += owned.consumer.statistics().fenced
            await self._give_up(owned)

    async def _register(self, owned: OwnedPartition, engine: AsyncEngine) -> bool:
        """Record the epoch in the database (waiting for a former owner's transactions
        that passed their check); False if the database knows a newer one."""
        assert self._fence is not None
        lease = owned.lease
        stream_key = self._configs[lease.partition].stream_key
        while True:
            try:
                recorded = await self._fence.register(engine, stream_key, self.group, lease.epoch)
            except SafeSyncError as exc:
                _log.warning(
                    "%s: partition %d: could not register epoch %d: %s",
                    self.member,
                    lease.partition,
                    lease.epoch,
                    exc,
                )
                await asyncio.sleep(_REGISTER_RETRY_SECONDS)
                continue
            if recorded == lease.epoch:
                return True
            _log.warning(
                "%s: partition %d: the database has epoch %d, Redis gave %d (Redis lost its "
                "counter?): raising it and acquiring again",
                self.member,
                lease.partition,
                recorded,
                lease.epoch,
            )
            await self._leases.raise_epoch(lease.partition, recorded)
            return False

    async def _give_up(self, owned: OwnedPartition) -> None:
        partition = owned.lease.partition
        if self._owned.get(partition) is owned:
            del self._owned[partition]
        if owned.lost:
            return
        try:
            await self._leases.release(owned.lease)
        except QueueError as exc:
            _log.warning(
                "%s: could not release partition %d (it expires by itself): %s",
                self.member,
                partition,
                exc,
            )
            return
        self._counts["released"] += 1
        self._metrics.inc("partition_rebalances", *self._labels, "released")
        _log.info("%s: released partition %d (epoch %d)", self.member, partition, owned.lease.epoch)

    async def _leave(self, *, drain: bool) -> None:
        """Leave the membership first (the others rebalance at once), then stop every
        partition (drained, or cancelled) and release its lease."""
        with contextlib.suppress(QueueError):
            await self._leases.leave(self.member)
        owned = list(self._owned.values())
        for one in owned:
            one.giving_up = True
            if drain:
                one.stop()
            elif one.task is not None:
                one.task.cancel()
        tasks = [o.task for o in owned if o.task is not None]
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)
