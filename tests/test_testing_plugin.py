"""The shipped pytest fixtures work in a user's project of their own: a test suite that
only enables the plugin and uses its fixtures passes against configured servers and,
with nothing configured, against embedded ones."""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

import anyio

from safesync_async import DbSession, create_engine

from .support.backends import MARIADB
from .support.cluster import PrivateRedisCluster
from .support.settings import REDIS_URL

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "user_tests"
USER_TESTS = 6  # handlers: session, stream, poison; FastAPI app: order, reminder, metrics


async def _run_user_suite(tmp_path: Path, env: dict[str, str]) -> str:
    """Copy examples/user_tests into its own project (own rootdir, warnings as errors) and
    run it; returns pytest's output, asserting it passed."""
    for source in EXAMPLE.glob("*.py"):
        shutil.copy(source, tmp_path / source.name)
    (tmp_path / "pytest.ini").write_text("[pytest]\nfilterwarnings = error\n")
    result = await anyio.run_process(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(tmp_path)],
        cwd=tmp_path,
        env=env,
        check=False,
    )
    output = result.stdout.decode() + result.stderr.decode()
    assert result.returncode == 0, output
    assert f"{USER_TESTS} passed" in output
    return output


def _environment(**urls: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SAFESYNC_")}
    env.update(urls)
    return env


async def test_user_suite_on_configured_servers(tmp_path: Path) -> None:
    """Pointed at MariaDB and Redis by environment variables, the user suite passes, its
    session fixture left nothing behind and its other fixtures dropped their tables."""
    engine = create_engine(MARIADB.url)
    async with DbSession(engine) as session:
        await session.execute("DROP TABLE IF EXISTS user_notes")
    await _run_user_suite(
        tmp_path,
        _environment(SAFESYNC_DATABASE_URL=MARIADB.url, SAFESYNC_REDIS_URL=REDIS_URL),
    )
    async with DbSession(engine) as session:
        assert await session.execute_scalar("SELECT COUNT(*) FROM user_notes") == 0
        await session.execute("DROP TABLE user_notes")
        left = await session.fetch_all(
            "SELECT table_name AS name FROM information_schema.tables "
            "WHERE table_schema = DATABASE() AND table_name LIKE 'user\\_%'"
        )
    await engine.dispose()
    assert left == []  # the suite's fixtures dropped every table they created


async def test_user_suite_on_a_redis_cluster(
    tmp_path: Path, redis_cluster: PrivateRedisCluster
) -> None:
    """With SAFESYNC_REDIS_CLUSTER=1 the Redis URL names a cluster node: the fixtures hand
    out a cluster client and the same user suite passes on the cluster."""
    await _run_user_suite(
        tmp_path,
        _environment(
            SAFESYNC_DATABASE_URL=MARIADB.url,
            SAFESYNC_REDIS_URL=redis_cluster.url,
            SAFESYNC_REDIS_CLUSTER="1",
        ),
    )
    engine = create_engine(MARIADB.url)
    async with DbSession(engine) as session:
        await session.execute("DROP TABLE IF EXISTS user_notes")
    await engine.dispose()


async def test_user_suite_with_nothing_configured(tmp_path: Path) -> None:
    """With no URL configured anywhere, the fixtures start embedded PostgreSQL and Valkey
    for the session and the same user suite passes."""
    await _run_user_suite(tmp_path, _environment())
