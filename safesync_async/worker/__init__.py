"""The worker runner: ``safesync worker module:app`` runs a :class:`WorkerApp` in N
supervised processes, with a metrics and health endpoint and reload for development.

Only :class:`WorkerApp` is imported here; the runner itself
(:func:`safesync_async.worker.runner.run_worker`) loads when the command runs.
"""

from __future__ import annotations

from .app import WorkerApp

__all__ = ["WorkerApp"]
