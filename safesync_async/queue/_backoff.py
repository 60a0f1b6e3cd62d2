"""Exponential backoff with jitter, interruptible by a stop event."""

from __future__ import annotations

import asyncio
import contextlib
import random

__all__ = ["Backoff"]


class Backoff:
    """Delays of ``uniform(c / 2, c)`` with ``c = min(maximum, initial * 2**n)`` for the n-th
    failure in a row: growing surely, spread enough that reconnecting workers do not
    stampede."""

    def __init__(self, initial: float, maximum: float) -> None:
        self._initial = initial
        self._maximum = maximum
        self._failures = 0

    def reset(self) -> None:
        self._failures = 0

    def next_delay(self) -> float:
        ceiling = min(self._maximum, self._initial * 2 ** min(self._failures, 32))
        self._failures += 1
        return random.uniform(ceiling / 2, ceiling)

    async def sleep(self, stop: asyncio.Event | None = None) -> None:
        """Sleep the next delay, or less if ``stop`` is set meanwhile."""
        delay = self.next_delay()
        if stop is None:
            await asyncio.sleep(delay)
            return
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(delay):
                await stop.wait()
