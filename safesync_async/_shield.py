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
    background. If ``coro`` itself fails, that error wins: it carries information
    (for example "commit outcome unknown") the caller must not lose.
    """
    task = asyncio.create_task(coro)
    cancelled: asyncio.CancelledError | None = None
    while True:
        try:
            result = await asyncio.shield(task)
        except asyncio.CancelledError as exc:
            if task.done():
                raise
            cancelled = exc
        else:
            break
    if cancelled is not None:
        raise cancelled
    return result
