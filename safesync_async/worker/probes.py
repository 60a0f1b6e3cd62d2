"""Liveness and readiness of the runner, from what its worker processes last reported."""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

from .http import Probe
from .slots import Incarnation, Slot

__all__ = ["HEARTBEAT_TIMEOUT", "live_probe", "ready_probe", "worker_documents"]

#: A process that has not reported for this long counts as stuck (liveness fails, and
#: it is not ready). Processes report every second.
HEARTBEAT_TIMEOUT = 20.0


def _fresh(incarnation: Incarnation, now: float) -> bool:
    return now - incarnation.last_seen < HEARTBEAT_TIMEOUT


def worker_documents(slots: Sequence[Slot]) -> list[dict[str, Any]]:
    """One JSON-able document per worker slot."""
    now = time.monotonic()
    workers = []
    for slot in slots:
        running = slot.running
        status = running.status if running is not None else None
        workers.append(
            {
                "index": slot.index,
                "consumer": slot.consumer_name,
                "pid": running.process.pid if running is not None else None,
                "state": status.state if status else (slot.waiting or "starting"),
                "ready": bool(running and status and status.ready and _fresh(running, now)),
                "reasons": list(status.reasons) if status else [],
                "restarts": slot.history.restarts,
                "seconds_since_report": round(now - running.last_seen, 3) if running else None,
                "in_flight": status.in_flight if status else 0,
            }
        )
    return workers


def live_probe(slots: Sequence[Slot]) -> Probe:
    """Live unless a running process stopped reporting (its event loop is stuck)."""
    now = time.monotonic()
    stuck = [
        slot.index
        for slot in slots
        if (running := slot.running) is not None and not _fresh(running, now)
    ]
    document = {"live": not stuck, "stuck_workers": stuck, "workers": worker_documents(slots)}
    return Probe(not stuck, document)


def ready_probe(slots: Sequence[Slot], *, stopping: bool) -> Probe:
    """Ready when every process's consumer is ready and the runner is not stopping."""
    workers = worker_documents(slots)
    ready = not stopping and all(worker["ready"] for worker in workers)
    return Probe(ready, {"ready": ready, "stopping": stopping, "workers": workers})
