"""``--reload``: notice changed Python files by polling their modification times (no
dependency, works on every file system, including mounted volumes)."""

from __future__ import annotations

import asyncio
import fnmatch
import os
from collections.abc import AsyncGenerator, Sequence

__all__ = ["ChangeWatcher"]

_SKIPPED_DIRS = frozenset(
    {"__pycache__", "node_modules", "site-packages", "venv", ".venv", "build", "dist"}
)

Snapshot = dict[str, int]


class ChangeWatcher:
    """Yields the paths that changed (added, modified, removed) under ``directories``,
    at most every ``interval`` seconds. Hidden directories, virtual environments and
    caches are skipped."""

    def __init__(
        self,
        directories: Sequence[str],
        *,
        patterns: Sequence[str] = ("*.py",),
        interval: float = 0.5,
    ) -> None:
        self.directories = [os.path.abspath(d) for d in directories]
        self.patterns = tuple(patterns)
        self.interval = interval

    def snapshot(self) -> Snapshot:
        """Path -> modification time (ns) of every watched file now."""
        found: Snapshot = {}
        for directory in self.directories:
            for root, dirs, files in os.walk(directory):
                dirs[:] = [d for d in dirs if not d.startswith(".") and d not in _SKIPPED_DIRS]
                for name in files:
                    if any(fnmatch.fnmatch(name, pattern) for pattern in self.patterns):
                        path = os.path.join(root, name)
                        try:
                            found[path] = os.stat(path).st_mtime_ns
                        except OSError:
                            continue  # removed meanwhile
        return found

    async def changes(self) -> AsyncGenerator[list[str], None]:
        """Each time something changed: the changed paths, sorted."""
        before = await asyncio.to_thread(self.snapshot)
        while True:
            await asyncio.sleep(self.interval)
            after = await asyncio.to_thread(self.snapshot)
            changed = sorted(
                path for path in before.keys() | after.keys() if before.get(path) != after.get(path)
            )
            before = after
            if changed:
                yield changed
