"""The shipped pytest fixtures work in a user's project of their own: a test suite that
only enables the plugin and uses its fixtures passes."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import anyio

from safesync_async import DbSession, create_engine

from .support.backends import MARIADB

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "user_tests"


async def test_user_style_suite_passes(tmp_path: Path) -> None:
    """A copy of examples/user_tests run as its own project (own rootdir and pytest
    settings, warnings as errors) passes, and its session fixture left nothing behind."""
    engine = create_engine(MARIADB.url)
    async with DbSession(engine) as session:
        await session.execute("DROP TABLE IF EXISTS user_notes")
    for name in ("conftest.py", "test_orders.py"):
        shutil.copy(EXAMPLE / name, tmp_path / name)
    (tmp_path / "pytest.ini").write_text("[pytest]\nfilterwarnings = error\n")
    result = await anyio.run_process(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(tmp_path)],
        cwd=tmp_path,
        check=False,
    )
    output = result.stdout.decode() + result.stderr.decode()
    assert result.returncode == 0, output
    assert "2 passed" in output
    async with DbSession(engine) as session:
        assert await session.execute_scalar("SELECT COUNT(*) FROM user_notes") == 0
        await session.execute("DROP TABLE user_notes")
    await engine.dispose()
