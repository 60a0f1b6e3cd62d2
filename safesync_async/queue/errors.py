"""Translation of redis-py exceptions into the library's tree, at one boundary."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator

from redis import exceptions as redis_exc

from ..errors import ConsumerGroupMissingError, QueueConnectionError, QueueError

__all__ = ["is_missing_group", "redis_errors"]


def is_missing_group(exc: BaseException) -> bool:
    """True for the server's NOGROUP reply (also when wrapped by a pipeline)."""
    return isinstance(exc, redis_exc.ResponseError) and "NOGROUP" in str(exc)


@contextlib.contextmanager
def redis_errors(operation: str, stream: str | None = None) -> Iterator[None]:
    """Re-raise redis-py errors as QueueConnectionError / ConsumerGroupMissingError /
    QueueError, naming the operation and stream.

    Also restores a cancellation that was swallowed on the way: on Python 3.11,
    ``asyncio.wait_for`` (which redis-py uses to send commands when a socket timeout is
    set) returns normally if the task is cancelled just as the send completes, so the
    command runs to the end and the cancellation is lost. The task still counts the
    request (``Task.cancelling()``), so it is raised again here.
    """
    where = f"{operation} on stream {stream!r}" if stream else operation
    try:
        yield
    except (redis_exc.ConnectionError, redis_exc.TimeoutError, OSError) as exc:
        raise QueueConnectionError(f"Redis unreachable during {where}: {exc}") from exc
    except redis_exc.ResponseError as exc:
        if is_missing_group(exc):
            raise ConsumerGroupMissingError(
                f"consumer group missing during {where}: {exc}"
            ) from exc
        raise QueueError(f"Redis refused {where}: {exc}") from exc
    except redis_exc.RedisError as exc:
        raise QueueError(f"Redis error during {where}: {exc}") from exc
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError(f"cancelled during {where}")
