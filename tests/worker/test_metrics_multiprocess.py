"""metrics.py in prometheus-client's multiprocess mode: a tracked gauge reaches the
files only through Metrics.sample_tracked, and the in-flight gauge is summed over the
live processes."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

from prometheus_client import CollectorRegistry
from prometheus_client.multiprocess import MultiProcessCollector, mark_process_dead

PROCESS = """
from safesync_async.metrics import DEFAULT_REGISTRY, metrics_for
metrics = metrics_for(DEFAULT_REGISTRY)
metrics.track("in_flight", lambda: {value}, "s", "g")
if {sample}:
    metrics.sample_tracked()
print(__import__("os").getpid())
"""


def run_process(directory: Path, value: int, *, sample: bool) -> int:
    """A process in multiprocess mode that tracks ``value`` in-flight messages; its pid."""
    result = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(PROCESS.format(value=value, sample=sample))],
        env={**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(directory)},
        capture_output=True,
        text=True,
        check=True,
    )
    return int(result.stdout)


def in_flight(directory: Path) -> list[float]:
    registry = CollectorRegistry()
    MultiProcessCollector(registry, path=str(directory))  # type: ignore[no-untyped-call]
    return [
        sample.value
        for family in registry.collect()
        for sample in family.samples
        if sample.name == "safesync_queue_in_flight_messages"
    ]


def test_tracked_gauge_is_summed_over_live_processes(tmp_path: Path) -> None:
    """Without sample_tracked a process's tracked value never reaches the collector
    (set_function is not read in multiprocess mode); with it, the values of two processes
    are one summed sample, and a process marked dead drops out of the sum."""
    run_process(tmp_path, 5, sample=False)
    assert in_flight(tmp_path) in ([], [0.0])
    first = run_process(tmp_path, 3, sample=True)
    run_process(tmp_path, 4, sample=True)
    assert in_flight(tmp_path) == [7.0]
    mark_process_dead(first, str(tmp_path))  # type: ignore[no-untyped-call]
    assert in_flight(tmp_path) == [4.0]
