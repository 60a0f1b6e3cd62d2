"""Resolve ``module:attribute`` into a :class:`WorkerApp`, with errors that say what to fix."""

from __future__ import annotations

import importlib
import os
import sys
import traceback
from types import ModuleType

from ..errors import ConfigurationError
from .app import WorkerApp

__all__ = ["load_app", "use_app_dir"]


def use_app_dir(app_dir: str) -> None:
    """Put ``app_dir`` first on ``sys.path`` (as ``python -m`` does with the current
    directory), so ``myapp.worker`` resolves from the project directory."""
    path = os.path.abspath(app_dir)
    if path not in sys.path:
        sys.path.insert(0, path)


def load_app(target: str) -> WorkerApp:
    """Import ``module:attribute`` and return the :class:`WorkerApp` it names. An async
    handler function becomes an app of its own (its stream and group must then come from
    the options or the environment). Every failure is a one-line
    :class:`ConfigurationError`."""
    module_name, _, attribute = target.partition(":")
    if not module_name or not attribute:
        raise ConfigurationError(
            f"{target!r} is not an import path: use module:attribute, e.g. myapp.worker:app"
        )
    found: object = _import(module_name)
    for part in attribute.split("."):
        try:
            found = getattr(found, part)
        except AttributeError:
            raise ConfigurationError(
                f"{target!r} does not resolve: {module_name!r} has no attribute {attribute!r}"
            ) from None
    if isinstance(found, WorkerApp):
        found.check()
        return found
    if isinstance(found, ModuleType | type) or not callable(found):
        raise ConfigurationError(
            f"{target!r} is a {type(found).__name__}, not a WorkerApp or an async handler"
        )
    app = WorkerApp(handler=found)  # checks the handler's signature
    app.check()
    return app


def _import(module_name: str) -> ModuleType:
    try:
        return importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        missing = exc.name or ""
        if module_name == missing or module_name.startswith(f"{missing}."):
            raise ConfigurationError(
                f"module {module_name!r} not found (no {missing!r} on the import path, which "
                f"starts with {sys.path[0]!r}); run from the project directory or pass --app-dir"
            ) from None
        raise ConfigurationError(f"importing {module_name!r} failed: {_summary(exc)}") from None
    except Exception as exc:
        raise ConfigurationError(f"importing {module_name!r} failed: {_summary(exc)}") from None


def _summary(exc: BaseException) -> str:
    """``Type: message (file:line)`` of where the import failed."""
    where = ""
    if isinstance(exc, SyntaxError) and exc.filename:
        where = f" ({exc.filename}:{exc.lineno})"
    else:
        frames = traceback.extract_tb(exc.__traceback__)
        if frames:
            where = f" ({frames[-1].filename}:{frames[-1].lineno})"
    message = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {message}{where}" if message else f"{type(exc).__name__}{where}"
