"""The shape of a consumer implementation run by a worker process."""

from __future__ import annotations

import abc
import asyncio
import contextlib
from typing import Protocol

from ..protocol import WorkerSpec


class Variant(Protocol):
    """Connect and warm up, consume until the group is drained, release everything."""

    def prepare(self) -> None: ...

    def consume(self) -> dict[str, int]:
        """Consume until drained; returns counters (messages handled...)."""
        ...

    def close(self) -> None: ...


class AsyncVariant(abc.ABC):
    """A :class:`Variant` written with asyncio: all phases share one event loop, and
    whatever :meth:`aprepare` registers in ``resources`` is closed by :meth:`close`."""

    def __init__(self, spec: WorkerSpec) -> None:
        self.spec = spec
        self.resources = contextlib.AsyncExitStack()
        self._runner = asyncio.Runner()

    def prepare(self) -> None:
        self._runner.run(self.aprepare())

    def consume(self) -> dict[str, int]:
        return self._runner.run(self.aconsume())

    def close(self) -> None:
        try:
            self._runner.run(self.resources.aclose())
        finally:
            self._runner.close()

    @abc.abstractmethod
    async def aprepare(self) -> None: ...

    @abc.abstractmethod
    async def aconsume(self) -> dict[str, int]: ...
