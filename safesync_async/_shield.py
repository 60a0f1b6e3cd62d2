"""Cleanup that must finish even when the calling task is cancelled."""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any, TypeVar

_T = TypeVar("_T")


async def run_to_completion(coro: Coroutine[Any, Any, _T]) -> _T:
    """Run ``coro`` in its own task and wait for it even if the caller is cancelled.

    A cancellation that arrives meanwhile is re-raised once ``coro`` is done, so the
    caller never returns (or unwinds) while its cleanup is still running in the
    background, and never keeps running after it was asked to stop. If ``coro`` failed
    too, its error becomes the cancellation's ``__cause__`` (callers that must keep
    what it says, e.g. "commit outcome unknown", also record it elsewhere, such as
    ``DbSession.outcome``). The cancellation wins because a task asked to stop must stop:
    raising the cleanup's error instead would let ``retry_transaction`` start another
    attempt, or an ``asyncio.timeout`` block leave its deadline unreported.

    (``asyncio.shield`` does the same waiting; this costs one event-loop callback less
    per call, which matters on the per-message path.)
    """
    loop = asyncio.get_running_loop()
    task = loop.create_task(coro)
    cancelled: asyncio.CancelledError | None = None
    while not task.done():
        waiter = loop.create_future()

        def wake(_: asyncio.Task[_T], waiter: asyncio.Future[None] = waiter) -> None:
            if not waiter.done():
                waiter.set_result(None)

        task.add_done_callback(wake)
        try:
            await waiter
        except asyncio.CancelledError as exc:
            task.remove_done_callback(wake)
            cancelled = exc
    if cancelled is None:
        return task.result()
    error = None if task.cancelled() else task.exception()
    if error is not None:
        raise cancelled from error
    raise cancelled
