"""Prometheus metrics, prefix ``safesync_``, in a registry the caller chooses.

Every public entry point takes ``registry=``: a :class:`prometheus_client.CollectorRegistry`,
``None`` to record nothing, or (the default) the global ``prometheus_client.REGISTRY``.
Collectors are created once per registry. Labels are bounded: stream, group, outcome,
lock kind, outbox table and a caller-given operation name; never message ids or consumer
names. Stream names can come from data (a stream per tenant), so a registry labels at most
:data:`MAX_STREAM_LABELS` distinct streams and counts the others under ``"other"``.
Recording never raises into user code: a failure is logged once and dropped.

prometheus-client's multiprocess mode (``PROMETHEUS_MULTIPROC_DIR``, used by ``safesync
worker --workers N``) works too: the gauges say how to combine processes (in-flight
messages are summed over live processes, the lag is the most recent value), and a process
in that mode calls :meth:`Metrics.sample_tracked` now and then, because the parent reads
values from files and never calls the readers behind a tracked gauge.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import weakref
from collections.abc import Callable
from typing import Any, Final

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, Histogram

__all__ = [
    "DEFAULT_REGISTRY",
    "MAX_STREAM_LABELS",
    "OTHER_STREAMS",
    "Metrics",
    "RegistryArg",
    "metrics_for",
]

_log = logging.getLogger("safesync_async.metrics")


class _DefaultRegistry:
    def __repr__(self) -> str:
        return "DEFAULT_REGISTRY"


#: Sentinel meaning "prometheus_client's global REGISTRY".
DEFAULT_REGISTRY: Final = _DefaultRegistry()
RegistryArg = CollectorRegistry | _DefaultRegistry | None

#: Distinct ``stream`` label values one registry records; later streams count as OTHER_STREAMS.
MAX_STREAM_LABELS: Final = 100
OTHER_STREAMS: Final = "other"

_LATENCY_BUCKETS = (
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
)  # fmt: skip


class Metrics:
    """The library's collectors in one registry, or a recorder that does nothing."""

    def __init__(self, registry: CollectorRegistry | None) -> None:
        self.enabled = registry is not None
        self._warned = False
        self._warned_streams = False
        # Labelled children, looked up once: labels() takes a lock and builds a key.
        self._children: dict[tuple[str, tuple[str, ...]], Any] = {}
        self._readers: dict[tuple[str, tuple[str, ...]], list[Callable[[], float]]] = {}
        self._streams: set[str] = set()
        if registry is None:
            return
        r = registry
        self.transactions = Counter(
            "safesync_db_transactions_total",
            "Transactions ended by outcome: committed, rolled_back, commit_failed, commit_unknown.",
            ["operation", "outcome"],
            registry=r,
        )
        self.transaction_seconds = Histogram(
            "safesync_db_transaction_duration_seconds",
            "Time from DbSession entry to the end of its cleanup.",
            ["operation"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.lock_wait_seconds = Histogram(
            "safesync_db_lock_wait_seconds",
            "Time spent acquiring a row or advisory lock.",
            ["kind"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.lock_acquisitions = Counter(
            "safesync_db_lock_acquisitions_total",
            "Lock acquisition attempts by kind and outcome.",
            ["kind", "outcome"],
            registry=r,
        )
        self.occ_conflicts = Counter(
            "safesync_db_occ_conflicts_total",
            "Optimistic updates that matched no row (version conflict).",
            ["operation"],
            registry=r,
        )
        self.retries = Counter(
            "safesync_db_retries_total",
            "Transactions run again after a conflict (retry_transaction, or a consumer's "
            "transaction_retries), by reason.",
            ["operation", "reason"],
            registry=r,
        )
        self.invalidations = Counter(
            "safesync_db_connections_invalidated_total",
            "Pooled connections discarded because their state was in doubt.",
            ["reason"],
            registry=r,
        )
        self.messages = Counter(
            "safesync_queue_messages_total",
            "Stream messages by outcome (acked, failed, dead_lettered, duplicate, ...).",
            ["stream", "group", "outcome"],
            registry=r,
        )
        self.handler_seconds = Histogram(
            "safesync_queue_handler_duration_seconds",
            "Handler run time, including its transaction's commit.",
            ["stream", "group"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.ack_seconds = Histogram(
            "safesync_queue_ack_duration_seconds",
            "Time of one XACK round trip (a batch of ids).",
            ["stream", "group"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.in_flight = Gauge(
            "safesync_queue_in_flight_messages",
            "Messages fetched and not yet acked or released.",
            ["stream", "group"],
            registry=r,
            multiprocess_mode="livesum",
        )
        self.claimed = Counter(
            "safesync_queue_claimed_total",
            "Stale pending entries claimed from other consumers.",
            ["stream", "group"],
            registry=r,
        )
        self.reconnects = Counter(
            "safesync_queue_reconnects_total",
            "Redis connection failures after which the consumer backed off and retried.",
            ["stream", "group"],
            registry=r,
        )
        self.database_outages = Counter(
            "safesync_queue_database_outages_total",
            "Deliveries that failed because the database was unavailable (an outage); the "
            "consumer kept them pending without spending a delivery.",
            ["stream", "group"],
            registry=r,
        )
        self.groups_recreated = Counter(
            "safesync_queue_groups_recreated_total",
            "Consumer groups found missing (NOGROUP) and created again.",
            ["stream", "group"],
            registry=r,
        )
        self.lag = Gauge(
            "safesync_queue_lag_messages",
            "Entries in the stream not yet delivered to the group (XINFO GROUPS lag).",
            ["stream", "group"],
            registry=r,
            multiprocess_mode="mostrecent",
        )
        self.published = Counter(
            "safesync_queue_published_total",
            "Entries added to a stream by a QueueProducer.",
            ["stream"],
            registry=r,
        )
        self.partition_rebalances = Counter(
            "safesync_queue_partition_rebalances_total",
            "Partitions a partitioned consumer took (acquired) or gave up (released), by event.",
            ["stream", "group", "event"],
            registry=r,
        )
        self.partition_lease_losses = Counter(
            "safesync_queue_partition_lease_losses_total",
            "Partition leases lost without being given up (expired during a pause or an "
            "outage, or taken by another consumer).",
            ["stream", "group"],
            registry=r,
        )
        self.fenced_commits = Counter(
            "safesync_queue_fenced_commits_total",
            "Transactions refused because their partition had a newer owner (fencing).",
            ["stream", "group"],
            registry=r,
        )
        self.outbox_relayed = Counter(
            "safesync_queue_outbox_relayed_total",
            "Outbox rows published to their streams by an OutboxRelay.",
            ["table"],
            registry=r,
        )

    def stream_label(self, stream: str) -> str:
        """The ``stream`` label value for ``stream``: itself for the first
        MAX_STREAM_LABELS distinct streams of this registry, OTHER_STREAMS after."""
        if stream in self._streams or not self.enabled:
            return stream
        if len(self._streams) >= MAX_STREAM_LABELS:
            if not self._warned_streams:
                self._warned_streams = True
                _log.warning(
                    "more than %d distinct streams: metrics count further streams under stream=%r",
                    MAX_STREAM_LABELS,
                    OTHER_STREAMS,
                )
            return OTHER_STREAMS
        self._streams.add(stream)
        return stream

    def failed(self, exc: Exception) -> None:
        """Record that recording failed; logged once, never raised."""
        if not self._warned:
            self._warned = True
            _log.warning("metrics recording failed and is skipped: %r", exc)

    def _child(self, name: str, labels: tuple[str, ...]) -> Any:
        key = (name, labels)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = getattr(self, name).labels(*labels)
        return child

    def inc(self, counter_name: str, *labels: str, amount: float = 1.0) -> None:
        if not self.enabled:
            return
        try:
            self._child(counter_name, labels).inc(amount)
        except Exception as exc:
            self.failed(exc)

    def observe(self, histogram_name: str, value: float, *labels: str) -> None:
        if not self.enabled:
            return
        try:
            self._child(histogram_name, labels).observe(value)
        except Exception as exc:
            self.failed(exc)

    def track(self, gauge_name: str, read: Callable[[], float], *labels: str) -> Callable[[], None]:
        """Add ``read()`` to what a gauge reports when it is collected (the sum over the
        readers tracked under the same labels; nothing is recorded per update). Returns
        the function that removes the reader again."""
        if not self.enabled:
            return _ignore
        readers = self._readers.setdefault((gauge_name, labels), [])
        readers.append(read)
        try:
            self._child(gauge_name, labels).set_function(lambda: sum(r() for r in list(readers)))
        except Exception as exc:
            self.failed(exc)

        def untrack() -> None:
            with contextlib.suppress(ValueError):
                readers.remove(read)

        return untrack

    def sample_tracked(self) -> None:
        """Store what each tracked gauge reports now as its plain value. Only needed in
        prometheus-client's multiprocess mode, where collection reads stored values."""
        for (gauge_name, labels), readers in list(self._readers.items()):
            try:
                self._child(gauge_name, labels).set(sum(read() for read in list(readers)))
            except Exception as exc:
                self.failed(exc)

    def set(self, gauge_name: str, value: float, *labels: str) -> None:
        if not self.enabled:
            return
        try:
            self._child(gauge_name, labels).set(value)
        except Exception as exc:
            self.failed(exc)


def _ignore() -> None:
    pass


_DISABLED = Metrics(None)
_by_registry: weakref.WeakKeyDictionary[CollectorRegistry, Metrics] = weakref.WeakKeyDictionary()
_lock = threading.Lock()


def metrics_for(registry: RegistryArg) -> Metrics:
    """The :class:`Metrics` for ``registry`` (created on first use), or a no-op recorder."""
    if registry is None:
        return _DISABLED
    target = REGISTRY if isinstance(registry, _DefaultRegistry) else registry
    found = _by_registry.get(target)
    if found is not None:
        return found
    with _lock:
        found = _by_registry.get(target)
        if found is None:
            found = _by_registry[target] = Metrics(target)
        return found
