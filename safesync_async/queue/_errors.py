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
# or cluster down (CLUSTERDOWN, MASTERDOWN) or resharding (TRYAGAIN, and redirections
# that kept moving until redis-py gave up: ClusterError "TTL exhausted"). BusyLoadingError
# (LOADING) is a ConnectionError already.
_UNAVAILABLE = (
    redis_exc.OutOfMemoryError,
    redis_exc.ReadOnlyError,
    redis_exc.ClusterError,
    redis_exc.TryAgainError,
    redis_exc.AskError,
)
# The cluster client's own errors (not RedisError subclasses): no node reachable, or no
# node known to serve a slot. Both mean the cluster cannot serve now: a failover or a
# network partition.
_CLUSTER_UNREACHABLE = (redis_exc.RedisClusterUnreachableError, redis_exc.SlotNotCoveredError)
_CROSS_SLOT = (
    "keys in one transaction, script or multi-key command must share a Redis Cluster hash "
    "slot; keys derived from a stream keep its slot (see safesync_async.queue.keys)"
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
    if isinstance(exc, redis_exc.ClusterCrossSlotError):
        return QueueError(f"Redis refused {where} (CROSSSLOT): {_CROSS_SLOT}: {exc}")
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

    * connection errors and timeouts, and a cluster none of whose nodes answers or
      that serves no node for a slot: :class:`QueueConnectionError`;
    * "not now" refusals (OOM, READONLY, MASTERDOWN, CLUSTERDOWN, TRYAGAIN, BUSY,
      redirections that never settled): :class:`QueueUnavailableError`;
    * keys of one transaction in different cluster slots (CROSSSLOT): :class:`QueueError`;
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
    except _CLUSTER_UNREACHABLE as exc:
        raise QueueConnectionError(f"Redis Cluster unreachable during {where}: {exc}") from exc
    except redis_exc.CrossSlotTransactionError as exc:
        raise QueueError(f"Redis Cluster refused {where}: {_CROSS_SLOT}: {exc}") from exc
    except redis_exc.RedisClusterException as exc:
        raise QueueError(f"Redis Cluster client error during {where}: {exc}") from exc
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError(f"cancelled during {where}")
