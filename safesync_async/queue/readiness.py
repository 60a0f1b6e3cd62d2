"""Whether a consumer can do its work right now, for health checks.

The consumer reports a handful of facts as they change (its group exists, its loops run,
Redis or the database failed or answered again); :class:`ConsumerReadiness` keeps them
and answers "ready?" with the reasons when not. Recording is a few attribute writes:
the hooks sit on the consumer's hot paths.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

__all__ = ["ConsumerReadiness", "ReadinessState"]


@dataclass(frozen=True, slots=True)
class ReadinessState:
    """A snapshot of :class:`ConsumerReadiness`: ``ready``, and why not."""

    ready: bool
    running: bool
    reasons: tuple[str, ...]


class ConsumerReadiness:
    """A consumer is **ready** when its consumer group exists, its loops run, and
    neither Redis nor the database is in an outage (the last Redis command or database
    transaction failed for lack of the server and none has succeeded since).

    ``consumer.readiness.ready`` is what a readiness probe should answer; ``state()``
    adds the reasons. A database outage is noticed when a handler's transaction fails
    for lack of the database (an idle consumer does not poll the database).
    """

    def __init__(self) -> None:
        self._running = False
        self._group = False
        self._redis_error: str | None = None
        self._database_error: str | None = None
        self._redis_since = 0.0
        self._database_since = 0.0

    # -- what the consumer reports ---------------------------------------------------

    def loops_started(self) -> None:
        self._running = True

    def loops_stopped(self) -> None:
        self._running = False

    def group_exists(self) -> None:
        self._group = True

    def group_missing(self) -> None:
        self._group = False

    def redis_failed(self, exc: BaseException) -> None:
        if self._redis_error is None:
            self._redis_since = time.monotonic()
        self._redis_error = str(exc) or type(exc).__name__

    def redis_ok(self) -> None:
        self._redis_error = None

    def database_failed(self, exc: BaseException) -> None:
        if self._database_error is None:
            self._database_since = time.monotonic()
        self._database_error = str(exc) or type(exc).__name__

    def database_ok(self) -> None:
        self._database_error = None

    # -- what a probe asks -----------------------------------------------------------

    @property
    def ready(self) -> bool:
        return (
            self._running
            and self._group
            and self._redis_error is None
            and self._database_error is None
        )

    def state(self) -> ReadinessState:
        """Whether the consumer is ready, whether its loops run, and the reasons."""
        reasons = []
        if not self._running:
            reasons.append("consumer loops not running")
        if not self._group:
            reasons.append("consumer group not created yet")
        now = time.monotonic()
        if self._redis_error is not None:
            seconds = now - self._redis_since
            reasons.append(f"Redis outage for {seconds:.1f} s: {self._redis_error}")
        if self._database_error is not None:
            seconds = now - self._database_since
            reasons.append(f"database outage for {seconds:.1f} s: {self._database_error}")
        return ReadinessState(ready=not reasons, running=self._running, reasons=tuple(reasons))
