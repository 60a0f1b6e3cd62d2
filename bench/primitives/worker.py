"""A primitives worker process: ``python -m bench.primitives.worker '<CellSpec json>'``.

Connects and runs its warm-up transfers, says READY, waits for GO (the parent resets the
table meanwhile), runs the measured transfers, and reports its own start/end time, CPU
(user + system, all threads: ``/proc/self/stat``'s figure at nanosecond resolution,
``time.process_time()``) and counters; it closes its connections only when the
parent closes its stdin after sampling the servers, so that the server processes serving
them (PostgreSQL's backends) are still there to be counted.
"""

from __future__ import annotations

import logging
import sys
import time

from ..procstat import status_bytes
from ..protocol import GO, READY, RESULT, WorkerResult
from ..stats import percentile
from .harness import Implementation
from .workload import CellSpec, transfers, warm_up_transfers


def make_implementation(spec: CellSpec) -> Implementation:
    """The implementation to run (imported lazily: each needs only its own driver)."""
    if spec.implementation == "safesync":
        from .library import LibraryTransfers

        return LibraryTransfers(spec)
    if spec.implementation == "seed":
        from .seed import SeedTransfers

        return SeedTransfers(spec)
    if spec.implementation == "raw" and spec.backend == "postgresql":
        from .raw_postgres import RawPostgres

        return RawPostgres(spec)
    if spec.implementation == "raw":
        from .raw_mariadb import RawMariaDB

        return RawMariaDB(spec)
    raise ValueError(f"unknown implementation {spec.implementation!r}")


def _say(line: str) -> None:
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


def _micros(seconds: float | None) -> int:
    return -1 if seconds is None else round(seconds * 1e6)


def main() -> int:
    logging.basicConfig(level=logging.WARNING, format="%(name)s %(levelname)s %(message)s")
    spec = CellSpec.from_json(sys.argv[1])
    implementation = make_implementation(spec)
    try:
        implementation.prepare(warm_up_transfers(spec))
        measured = transfers(spec.accounts, spec.ops)
        rss_ready = status_bytes("VmRSS") or 0
        _say(READY)
        if sys.stdin.readline().strip() != GO:
            return 3
        retries_before = implementation.retries()
        cpu_before = time.process_time()
        started = time.clock_gettime(time.CLOCK_MONOTONIC)
        load = implementation.run(measured)
        finished = time.clock_gettime(time.CLOCK_MONOTONIC)
        cpu_used = time.process_time() - cpu_before
        retries = {
            reason: count - retries_before.get(reason, 0)
            for reason, count in implementation.retries().items()
        }
        counters = {
            "committed": len(load.latencies),
            "p50_us": _micros(percentile(load.latencies, 50)),
            "p99_us": _micros(percentile(load.latencies, 99)),
            **{f"retry:{reason}": count for reason, count in retries.items() if count},
            **{f"error:{name}": count for name, count in load.errors.items()},
        }
        result = WorkerResult(
            started=started,
            finished=finished,
            cpu_seconds=cpu_used,
            rss_ready_bytes=rss_ready,
            peak_rss_bytes=status_bytes("VmHWM") or 0,
            counters=counters,
        )
        _say(RESULT + result.to_json())
        sys.stdin.readline()  # EOF once the parent has sampled the servers' CPU
    finally:
        implementation.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
