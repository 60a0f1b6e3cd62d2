"""When a worker process that died is started again, and when the runner gives up."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["CRASH_LOOP_AFTER", "Decision", "RestartHistory", "RestartPolicy"]

#: Crashes in a row (each after a short run) from which a worker counts as crash-looping.
CRASH_LOOP_AFTER = 3


@dataclass(frozen=True, slots=True)
class RestartPolicy:
    """Exponential backoff between restarts of one worker process, capped.

    A process that never got its consumer running (it failed while starting: an import
    error in the child, a crash in the user's module) ``max_start_failures`` times in a
    row makes the runner give up: restarting cannot help. A process that ran and then
    died is always restarted, after ``initial_delay`` doubling up to ``max_delay``; a run
    of ``stable_after`` seconds resets the backoff.
    """

    initial_delay: float = 0.5
    max_delay: float = 30.0
    stable_after: float = 60.0
    max_start_failures: int = 5


@dataclass(frozen=True, slots=True)
class Decision:
    """What to do after a worker process exited unexpectedly."""

    give_up: bool
    delay: float
    crash_loop: bool
    start_failures: int
    crashes: int


class RestartHistory:
    """The exits of one worker slot, for :class:`RestartPolicy` decisions."""

    def __init__(self, policy: RestartPolicy) -> None:
        self.policy = policy
        self.restarts = 0
        self.crashes = 0  # exits in a row, each after a run shorter than stable_after
        self.start_failures = 0  # exits in a row before the consumer ever ran

    def reset(self) -> None:
        """Forget the past (a deliberate restart, e.g. after a code change)."""
        self.crashes = 0
        self.start_failures = 0

    def record_exit(self, *, uptime: float, started: bool) -> Decision:
        """Record an unexpected exit after ``uptime`` seconds; ``started``: the consumer
        was running at some point."""
        policy = self.policy
        if started:
            self.start_failures = 0
        else:
            self.start_failures += 1
        if uptime >= policy.stable_after:
            self.crashes = 0
        self.crashes += 1
        delay = min(policy.max_delay, policy.initial_delay * 2 ** min(self.crashes - 1, 32))
        give_up = self.start_failures >= policy.max_start_failures
        if not give_up:
            self.restarts += 1
        return Decision(
            give_up=give_up,
            delay=delay,
            crash_loop=self.crashes >= CRASH_LOOP_AFTER,
            start_failures=self.start_failures,
            crashes=self.crashes,
        )
