"""--reload's watcher: a modified, added or removed Python file under a watched directory
is reported; other files, caches and hidden directories are not."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

from safesync_async.worker.reload import ChangeWatcher


def bump(path: Path) -> None:
    stat = path.stat()
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))


async def test_changes_are_reported(tmp_path: Path) -> None:
    """Each change to a .py file is reported once; changes elsewhere are ignored."""
    (tmp_path / "app.py").write_text("x = 1\n")
    (tmp_path / "__pycache__").mkdir()
    (tmp_path / ".git").mkdir()
    watcher = ChangeWatcher([str(tmp_path)], interval=0.05)
    changes = watcher.changes()
    first = asyncio.ensure_future(anext(changes))
    await asyncio.sleep(0.15)
    (tmp_path / "notes.txt").write_text("ignored")
    (tmp_path / "__pycache__" / "app.py").write_text("ignored")
    (tmp_path / ".git" / "hook.py").write_text("ignored")
    bump(tmp_path / "app.py")
    assert await asyncio.wait_for(first, 5) == [str(tmp_path / "app.py")]
    (tmp_path / "new.py").write_text("")
    assert await asyncio.wait_for(anext(changes), 5) == [str(tmp_path / "new.py")]
    (tmp_path / "new.py").unlink()
    assert await asyncio.wait_for(anext(changes), 5) == [str(tmp_path / "new.py")]
    await changes.aclose()
