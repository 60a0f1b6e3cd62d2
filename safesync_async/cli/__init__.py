"""The ``safesync`` command line: stream health, pending entries, dead letters, outbox.

It needs the ``cli`` extra (typer, rich): ``pip install safesync-async[cli]``. Importing
:mod:`safesync_async` never imports this package, and this package loads typer only when
the command runs or ``app`` is asked for, so ``python -m safesync_async.cli`` without the
extra explains what to install instead of failing with a traceback.
"""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import typer

__all__ = ["INSTALL_HINT", "app", "main"]

INSTALL_HINT = "the safesync command needs its extra: install safesync-async[cli]"
_CLI_DEPENDENCIES = frozenset({"click", "rich", "typer"})


def __getattr__(name: str) -> typer.Typer:
    """``app``, the Typer application, imported on first use."""
    if name == "app":
        from .commands import app

        return app
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def main() -> None:
    """Run ``safesync``; without the ``cli`` extra, print how to install it and exit 2."""
    try:
        from .commands import app
    except ModuleNotFoundError as exc:
        if (exc.name or "").partition(".")[0] not in _CLI_DEPENDENCIES:
            raise
        print(f"error: {INSTALL_HINT}", file=sys.stderr)
        raise SystemExit(2) from None
    app(prog_name="safesync")
