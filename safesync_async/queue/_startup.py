"""A consumer's start-up: reach Redis (and the database, when the inbox is checked),
waiting out outages with backoff, bounded by ``startup_timeout``."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable

from ..errors import DatabaseUnavailableError, QueueUnavailableError
from ._backoff import Backoff
from ._statistics import ConsumerRecorder

__all__ = ["start_up"]

_log = logging.getLogger("safesync_async.queue.consumer")

# While start-up keeps failing, a WARNING at most this often (the first one at once).
_WARN_EVERY_SECONDS = 30.0


async def start_up(
    prepare: Callable[[], Awaitable[None]],
    *,
    stop: asyncio.Event,
    backoff: Backoff,
    recorder: ConsumerRecorder,
    startup_timeout: float | None,
    where: str,
) -> bool:
    """Run ``prepare`` until it succeeds; False if a stop was requested first.

    Outages (Redis or the database unavailable) are retried with ``backoff``; the first
    failure is logged at WARNING, then one WARNING every 30 s while they last. After
    ``startup_timeout`` seconds (None: never) the last outage error is raised again,
    saying for how long ``where`` (the servers, passwords hidden) could not be reached.
    """
    started = time.monotonic()
    warned_at: float | None = None
    while not stop.is_set():
        try:
            await prepare()
        except (QueueUnavailableError, DatabaseUnavailableError) as exc:
            if isinstance(exc, QueueUnavailableError):
                recorder.record_redis_unavailable(exc)
            now = time.monotonic()
            waited = now - started
            if startup_timeout is not None and waited >= startup_timeout:
                raise _gave_up(exc, startup_timeout, where) from exc
            if warned_at is None or now - warned_at >= _WARN_EVERY_SECONDS:
                warned_at = now
                _log.warning(
                    "the consumer cannot start yet (%s), retrying with backoff%s: %s",
                    where,
                    "" if startup_timeout is None else f" for up to {startup_timeout:g} s",
                    exc,
                )
            delay = backoff.next_delay()
            if startup_timeout is not None:
                delay = min(delay, max(0.0, startup_timeout - waited))
            try:
                async with asyncio.timeout(delay):
                    await stop.wait()
            except TimeoutError:
                pass
        else:
            recorder.record_redis_available()
            if warned_at is not None:
                _log.warning(
                    "the consumer started after %.1f s (%s)", time.monotonic() - started, where
                )
            return True
    return False


def _gave_up(exc: Exception, startup_timeout: float, where: str) -> Exception:
    """The outage error, of the same class, saying start-up gave up on it."""
    message = (
        f"the consumer could not start within startup_timeout={startup_timeout:g} s "
        f"({where}): {exc}"
    )
    if isinstance(exc, DatabaseUnavailableError):
        return type(exc)(message, errno=exc.errno, sqlstate=exc.sqlstate)
    return type(exc)(message)
