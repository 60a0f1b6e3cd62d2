"""A consumer worker process: ``python -m bench.worker '<WorkerSpec json>'``.

Prepares its consumer (connections open and warm), says READY, waits for GO, consumes
until the group is drained, then reports its own start/end time, CPU and memory.
"""

from __future__ import annotations

import logging
import sys
import time

from .consumers import make_variant
from .procstat import cpu_seconds, status_bytes
from .protocol import GO, READY, RESULT, WorkerResult, WorkerSpec


def _say(line: str) -> None:
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


def _cpu() -> float:
    used = cpu_seconds()
    if used is None:
        raise RuntimeError("cannot read this process's CPU time from /proc")
    return used


def main() -> int:
    logging.basicConfig(level=logging.WARNING, format="%(name)s %(levelname)s %(message)s")
    spec = WorkerSpec.from_json(sys.argv[1])
    variant = make_variant(spec)
    try:
        variant.prepare()
        rss_ready = status_bytes("VmRSS") or 0
        _say(READY)
        if sys.stdin.readline().strip() != GO:
            return 3
        cpu_before = _cpu()
        started = time.clock_gettime(time.CLOCK_MONOTONIC)
        counters = variant.consume()
        finished = time.clock_gettime(time.CLOCK_MONOTONIC)
        cpu_used = _cpu() - cpu_before
    finally:
        variant.close()
    peak_rss = status_bytes("VmHWM") or 0
    # A variant running other processes (the runner) measures its window itself.
    measured: tuple[float, float, float, int, float] | None = getattr(variant, "measurement", None)
    untimed_cpu = 0.0
    if measured is not None:
        started, finished, cpu_used, peak_rss, untimed_cpu = measured
    result = WorkerResult(
        started=started,
        finished=finished,
        cpu_seconds=cpu_used,
        rss_ready_bytes=rss_ready,
        peak_rss_bytes=peak_rss,
        untimed_cpu_seconds=untimed_cpu,
        counters=counters,
    )
    _say(RESULT + result.to_json())
    return 0


if __name__ == "__main__":
    sys.exit(main())
