"""What the parent and a worker subprocess tell each other.

The parent starts ``python -m bench.worker '<spec json>'``. The worker connects and warms
up, prints ``READY``, waits for ``GO`` on stdin, consumes until the group is drained and
prints ``RESULT`` followed by its measurements as JSON. Log output goes to stderr.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any

READY = "bench-worker-ready"
GO = "go"
RESULT = "bench-worker-result "


@dataclass(frozen=True, slots=True)
class WorkerSpec:
    """One consumer process to start."""

    kind: str  # "safesync", "safesync-ordered", "runner", "seed" or "raw"
    stream: str
    group: str
    consumer: str
    table: str
    concurrency: int
    database_url: str
    redis_url: str
    batch_size: int = 1
    deferred: bool = False  # the handler defers its UPDATE instead of executing it
    processes: int = 1  # kind "runner": worker processes of the one runner

    @property
    def name(self) -> str:
        return self.consumer

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> WorkerSpec:
        return cls(**json.loads(text))


@dataclass(frozen=True, slots=True)
class WorkerResult:
    """What one worker measured about itself (times are CLOCK_MONOTONIC seconds, which
    every process of the host shares, so windows of several workers can be combined)."""

    started: float
    finished: float
    cpu_seconds: float
    rss_ready_bytes: int
    peak_rss_bytes: int
    counters: dict[str, int] = field(default_factory=dict)
    # CPU its own child processes used outside [started, finished] (starting the runner)
    untimed_cpu_seconds: float = 0.0

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> WorkerResult:
        data: dict[str, Any] = json.loads(text)
        return cls(**data)
