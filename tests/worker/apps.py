"""Worker apps the runner tests start as ``safesync worker tests.worker.apps:<name>``.

Module-level declarations cannot take arguments, so tables and tuning come from
``TEST_WORKER_*`` environment variables (the stream from ``SAFESYNC_STREAM``, a setting of
the runner itself).
"""

from __future__ import annotations

import asyncio
import os
from typing import Any

from safesync_async import DbSession, Inbox, QueueMessage, WorkerApp

EFFECTS = os.environ.get("TEST_WORKER_EFFECTS", "unused")
INBOX = os.environ.get("TEST_WORKER_INBOX")
HANG_MS = int(os.environ.get("TEST_WORKER_HANG_MS", "0"))

if os.environ.get("TEST_WORKER_EXIT_AT_IMPORT") and "SAFESYNC_WORKER_INDEX" in os.environ:
    os._exit(1)  # a worker process that dies while starting, every time


async def record_effect(message: QueueMessage[Any], session: DbSession) -> None:
    """One effect row per applied message, naming the worker process that applied it."""
    await session.execute(
        f"INSERT INTO `{EFFECTS}` (message_id, message_key, n, worker) "
        "VALUES (:id, :key, :n, :worker)",
        {
            "id": message.id,
            "key": Inbox.message_key(message),
            "n": message.payload.get("n"),
            "worker": int(os.environ["SAFESYNC_WORKER_INDEX"]),
        },
    )
    if HANG_MS:
        await asyncio.sleep(HANG_MS / 1000)


effects = WorkerApp(
    group="g",
    handler=record_effect,
    inbox=Inbox(INBOX) if INBOX else None,
    concurrency=8,
    queue_options={
        "block_ms": 100,
        "claim_min_idle_ms": 1_000,
        "claim_interval_ms": 200,
        "reconnect_initial_delay": 0.05,
        "reconnect_max_delay": 0.3,
    },
)


async def without_session(message: QueueMessage[Any]) -> None:
    """A handler that needs no database."""


def not_async(message: QueueMessage[Any]) -> None:
    """A handler declared without ``async``."""


async def three_arguments(message: QueueMessage[Any], session: DbSession, extra: int) -> None:
    """A handler with one argument too many."""
