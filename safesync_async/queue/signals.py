"""Map SIGTERM / SIGINT to a graceful stop."""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Callable
from typing import Protocol

__all__ = ["install_signal_handlers"]


class Stoppable(Protocol):
    def stop(self) -> None: ...


def install_signal_handlers(
    *targets: Stoppable, signals: tuple[signal.Signals, ...] = (signal.SIGTERM, signal.SIGINT)
) -> Callable[[], None]:
    """On each of ``signals``, call ``stop()`` on every target (consumers, relays).

    Must be called from the running event loop (Unix). Returns a function that removes
    the handlers again.
    """
    loop = asyncio.get_running_loop()

    def stop_all() -> None:
        for target in targets:
            target.stop()

    for sig in signals:
        loop.add_signal_handler(sig, stop_all)

    def remove() -> None:
        for sig in signals:
            loop.remove_signal_handler(sig)

    return remove
