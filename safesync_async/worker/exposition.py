"""Prometheus metrics of all worker processes together, plus the runner's own.

The worker processes run in prometheus-client's multiprocess mode: each writes its values
to files in a private directory (``PROMETHEUS_MULTIPROC_DIR``, set before they import
prometheus_client) and the runner sums them when scraped. Counters and histograms of
processes that exited still count (a total must not fall because a process restarted);
their live gauges are removed when they exit.
"""

from __future__ import annotations

import shutil
import tempfile

from prometheus_client import CollectorRegistry, Counter, Gauge, generate_latest
from prometheus_client.multiprocess import MultiProcessCollector, mark_process_dead

__all__ = ["MULTIPROC_VARIABLE", "MetricsExposition"]

MULTIPROC_VARIABLE = "PROMETHEUS_MULTIPROC_DIR"


class MetricsExposition:
    """The runner's metrics: a private multiprocess directory and the registry that
    serves its sum, with ``safesync_worker_*`` figures about the processes."""

    def __init__(self, stream: str, group: str) -> None:
        self.directory = tempfile.mkdtemp(prefix="safesync-worker-metrics-")
        self._labels = (stream, group)
        self.registry = CollectorRegistry()
        MultiProcessCollector(self.registry, path=self.directory)  # type: ignore[no-untyped-call]
        self._restarts = Counter(
            "safesync_worker_restarts_total",
            "Worker processes started again after they exited unexpectedly.",
            ["stream", "group"],
            registry=self.registry,
        )
        self._processes = Gauge(
            "safesync_worker_processes",
            "Worker processes running.",
            ["stream", "group"],
            registry=self.registry,
        )
        self._ready = Gauge(
            "safesync_worker_ready_processes",
            "Worker processes whose consumer is ready (group exists, loops run, no outage).",
            ["stream", "group"],
            registry=self.registry,
        )
        self._restarts.labels(*self._labels)  # present (at 0) from the start

    def record_restart(self) -> None:
        self._restarts.labels(*self._labels).inc()

    def set_processes(self, running: int, ready: int) -> None:
        self._processes.labels(*self._labels).set(running)
        self._ready.labels(*self._labels).set(ready)

    def process_exited(self, pid: int) -> None:
        """Drop the live gauges of a process that exited (its totals stay)."""
        mark_process_dead(pid, self.directory)  # type: ignore[no-untyped-call]

    def render(self) -> bytes:
        """The text exposition format (reads the processes' files: call it off the loop)."""
        return generate_latest(self.registry)

    def close(self) -> None:
        shutil.rmtree(self.directory, ignore_errors=True)
