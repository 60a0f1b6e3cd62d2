"""Translation of redis-py exceptions into the library's tree, at one boundary.

Redis error replies start with a code (``NOGROUP``, ``WRONGTYPE``, ``OOM``...); redis-py
turns some codes into exception classes and keeps the others in the message. Both are
read here and nowhere else.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator

from redis import exceptions as redis_exc

from ..errors import (
    ConsumerGroupMissingError,
    QueueConnectionError,
    QueueError,
    QueueUnavailableError,
)

__all__ = ["is_busy_group", "redis_errors"]

# Refusals that say "not now": out of memory (noeviction), a read-only replica, a master
# or cluster down or resharding. BusyLoadingError (LOADING) is a ConnectionError already.
_UNAVAILABLE = (
    redis_exc.OutOfMemoryError,
    redis_exc.ReadOnlyError,
    redis_exc.ClusterDownError,
    redis_exc.TryAgainError,
)
# The reply to a read blocked on a stream that was deleted meanwhile (Redis 7.0+).
_STREAM_DELETED = "UNBLOCKED the stream key no longer exists"
# How redis-py prefixes the reply of a failed command in a pipeline.
_IN_PIPELINE = "of pipeline caused error: "


def _reply(exc: redis_exc.ResponseError) -> str:
    """The server's error reply, without redis-py's pipeline annotation."""
    text = str(exc)
    return text.partition(_IN_PIPELINE)[2] or text


def _code(exc: redis_exc.ResponseError) -> str:
    """The error code a reply starts with (``NOGROUP``, ``WRONGTYPE``, ...)."""
    return _reply(exc).partition(" ")[0]


def is_busy_group(exc: QueueError) -> bool:
    """True for the BUSYGROUP reply of XGROUP CREATE: the group exists already."""
    cause = exc.__cause__
    return isinstance(cause, redis_exc.ResponseError) and _code(cause) == "BUSYGROUP"


def _translate(exc: redis_exc.RedisError, where: str, stream: str | None) -> QueueError:
    if isinstance(exc, redis_exc.ConnectionError | redis_exc.TimeoutError):
        return QueueConnectionError(f"Redis unreachable during {where}: {exc}")
    if isinstance(exc, _UNAVAILABLE):
        return QueueUnavailableError(f"Redis refused {where} for now ({type(exc).__name__}): {exc}")
    if isinstance(exc, redis_exc.ResponseError):
        code = _code(exc)
        if code == "NOGROUP":
            return ConsumerGroupMissingError(f"consumer group missing during {where}: {exc}")
        if _reply(exc).startswith(_STREAM_DELETED):
            return ConsumerGroupMissingError(
                f"the stream was deleted (and its groups with it) during {where}: {exc}"
            )
        if code == "BUSY":  # a script runs longer than busy-reply-threshold
            return QueueUnavailableError(f"Redis refused {where} for now: {exc}")
        if code == "WRONGTYPE":
            return QueueError(
                f"Redis refused {where}: key {stream!r} holds a value that is not a stream; "
                "it was replaced or is used by something else, and is left alone"
            )
        return QueueError(f"Redis refused {where}: {exc}")
    return QueueError(f"Redis error during {where}: {exc}")


@contextlib.contextmanager
def redis_errors(operation: str, stream: str | None = None) -> Iterator[None]:
    """Re-raise redis-py errors as the library's :class:`QueueError` subclasses, naming the
    operation and stream:

    * connection errors and timeouts: :class:`QueueConnectionError`;
    * "not now" refusals (OOM, READONLY, MASTERDOWN, CLUSTERDOWN, TRYAGAIN, BUSY):
      :class:`QueueUnavailableError`;
    * NOGROUP, and a blocked read whose stream was deleted:
      :class:`ConsumerGroupMissingError`;
    * anything else (WRONGTYPE included): :class:`QueueError`.

    Also restores a cancellation that was swallowed on the way: on Python 3.11,
    ``asyncio.wait_for`` (which redis-py uses to send commands when a socket timeout is
    set) returns normally if the task is cancelled just as the send completes, so the
    command runs to the end and the cancellation is lost. The task still counts the
    request (``Task.cancelling()``), so it is raised again here.
    """
    where = f"{operation} on stream {stream!r}" if stream else operation
    try:
        yield
    except OSError as exc:
        raise QueueConnectionError(f"Redis unreachable during {where}: {exc}") from exc
    except redis_exc.RedisError as exc:
        raise _translate(exc, where, stream) from exc
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError(f"cancelled during {where}")
