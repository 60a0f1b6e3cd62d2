"""How a worker process drives an implementation: a fixed list of transfers taken by
concurrent workers (asyncio tasks or threads), each transfer timed, failures counted."""

from __future__ import annotations

import abc
import asyncio
import collections
import contextlib
import queue
import threading
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Generic, Protocol, TypeVar

from ..load import LoadResult
from .workload import CellSpec, Transfer

_Slot = TypeVar("_Slot")


class Implementation(Protocol):
    """Connect and warm up, run the measured transfers, release everything."""

    def prepare(self, warm_up: Sequence[Transfer]) -> None: ...

    def run(self, transfers: Sequence[Transfer]) -> LoadResult: ...

    def retries(self) -> dict[str, int]:
        """Retries so far, by reason (cumulative: the caller takes differences)."""
        ...

    def close(self) -> None: ...


def check_warm_up(result: LoadResult) -> None:
    if result.errors:
        raise RuntimeError(f"warm-up transfers failed: {dict(result.errors)}")


class AsyncImplementation(abc.ABC, Generic[_Slot]):
    """An :class:`Implementation` on asyncio: :meth:`connect` returns one slot per worker
    (a connection, or nothing when a pool serves them), :meth:`transfer` runs one transfer
    to completion, retries included. Whatever ``connect`` registers in ``resources`` is
    closed by :meth:`close`."""

    def __init__(self, spec: CellSpec) -> None:
        self.spec = spec
        self.resources = contextlib.AsyncExitStack()
        self._runner = asyncio.Runner()
        self._slots: Sequence[_Slot] = ()

    def prepare(self, warm_up: Sequence[Transfer]) -> None:
        async def prepare() -> LoadResult:
            self._slots = await self.connect()
            return await drive_tasks(self.transfer, self._slots, warm_up)

        check_warm_up(self._runner.run(prepare()))

    def run(self, transfers: Sequence[Transfer]) -> LoadResult:
        return self._runner.run(drive_tasks(self.transfer, self._slots, transfers))

    def close(self) -> None:
        try:
            self._runner.run(self.resources.aclose())
        finally:
            self._runner.close()

    @abc.abstractmethod
    async def connect(self) -> Sequence[_Slot]: ...

    @abc.abstractmethod
    async def transfer(self, slot: _Slot, transfer: Transfer) -> None: ...

    @abc.abstractmethod
    def retries(self) -> dict[str, int]: ...


async def drive_tasks(
    operation: Callable[[_Slot, Transfer], Awaitable[None]],
    slots: Sequence[_Slot],
    transfers: Sequence[Transfer],
) -> LoadResult:
    """One asyncio task per slot, each taking the next transfer until none is left."""
    pending = iter(transfers)
    latencies: list[float] = []
    errors: collections.Counter[str] = collections.Counter()

    async def worker(slot: _Slot) -> None:
        for transfer in pending:  # shared iterator: each transfer is taken exactly once
            started = time.perf_counter()
            try:
                await operation(slot, transfer)
            except Exception as exc:
                errors[type(exc).__name__] += 1
                continue
            latencies.append(time.perf_counter() - started)

    started = time.perf_counter()
    await asyncio.gather(*(worker(slot) for slot in slots))
    return LoadResult(time.perf_counter() - started, latencies, errors)


def drive_threads(
    operation: Callable[[Transfer], None], threads: int, transfers: Sequence[Transfer]
) -> LoadResult:
    """``threads`` threads, each taking the next transfer until none is left."""
    pending: queue.SimpleQueue[Transfer] = queue.SimpleQueue()
    for transfer in transfers:
        pending.put(transfer)
    latencies: list[float] = []
    errors: collections.Counter[str] = collections.Counter()
    errors_lock = threading.Lock()

    def worker() -> None:
        while True:
            try:
                transfer = pending.get_nowait()
            except queue.Empty:
                return
            started = time.perf_counter()
            try:
                operation(transfer)
            except Exception as exc:
                with errors_lock:
                    errors[type(exc).__name__] += 1
                continue
            latencies.append(time.perf_counter() - started)  # list.append is atomic

    running = [threading.Thread(target=worker, daemon=True) for _ in range(threads)]
    started = time.perf_counter()
    for thread in running:
        thread.start()
    for thread in running:
        thread.join()
    return LoadResult(time.perf_counter() - started, latencies, errors)
