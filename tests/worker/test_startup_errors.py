"""Start-up problems stop ``safesync worker`` before any worker process starts, with one
line naming the problem (and the server, its URL without the password) and the
documented exit code: 2 for configuration, 3 for an unreachable server."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable

import pytest

from .conftest import REPO_ROOT, Runner

SECRET = "s3cret-pa55"
UNREACHABLE_REDIS = f"redis://:{SECRET}@127.0.0.1:1/0"
UNREACHABLE_DATABASE = f"mysql+asyncmy://root:{SECRET}@127.0.0.1:1/test"


@pytest.mark.parametrize(
    ("args", "env", "code", "text"),
    [
        pytest.param(
            ["tests.worker.no_such_module:app"], {}, 2,
            "module 'tests.worker.no_such_module' not found", id="module-missing",
        ),
        pytest.param(
            ["tests.worker.apps:no_such_app"], {}, 2,
            "'tests.worker.apps' has no attribute 'no_such_app'", id="attribute-missing",
        ),
        pytest.param(["tests.worker.apps"], {}, 2, "is not an import path", id="no-colon"),
        pytest.param(
            ["tests.worker.apps:not_async", "--stream", "s", "--group", "g"], {}, 2,
            "is not a coroutine function", id="not-async",
        ),
        pytest.param(
            ["tests.worker.apps:three_arguments", "--stream", "s", "--group", "g"], {}, 2,
            "the handler takes (message) or (message, session)", id="wrong-arity",
        ),
        pytest.param(
            ["tests.worker.apps:without_session", "--group", "g"], {}, 2,
            "no stream: pass --stream, set SAFESYNC_STREAM", id="no-stream",
        ),
        pytest.param(
            ["tests.worker.apps:effects", "--stream", "s"], {"SAFESYNC_WORKERS": "many"}, 2,
            "$SAFESYNC_WORKERS must be an integer", id="bad-environment",
        ),
        pytest.param(
            ["tests.worker.apps:effects", "--stream", "s"],
            {"SAFESYNC_REDIS_URL": UNREACHABLE_REDIS}, 3,
            "Redis unreachable at redis://:***@127.0.0.1:1/0", id="redis-unreachable",
        ),
        pytest.param(
            ["tests.worker.apps:effects", "--stream", "s", "--database", UNREACHABLE_DATABASE],
            {}, 3, "database unreachable at mysql+asyncmy://root:***@127.0.0.1:1/test",
            id="database-unreachable",
        ),
    ],
)  # fmt: skip
async def test_startup_error_is_one_line_and_an_exit_code(
    runners: Callable[..., Runner], args: list[str], env: dict[str, str], code: int, text: str
) -> None:
    """The runner exits with ``code`` after one ``error: ...`` line containing ``text``,
    never showing a password and never starting a worker process."""
    runner = runners(*args, env=env, http=False)
    assert await runner.wait(timeout=30) == code, runner.stderr
    lines = runner.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), runner.stderr
    assert text in lines[0]
    assert SECRET not in runner.stderr


async def test_startup_error_as_json(runners: Callable[..., Runner]) -> None:
    """With --log-format json the start-up error is one JSON record (level error, event
    startup_failed, the exit code) naming the unreachable server without its password."""
    env = {"SAFESYNC_REDIS_URL": UNREACHABLE_REDIS}
    runner = runners("tests.worker.apps:effects", "--stream", "s", "--log-format", "json",
                     env=env, http=False)  # fmt: skip
    assert await runner.wait(timeout=30) == 3, runner.stderr
    [line] = runner.stderr.splitlines()
    record = json.loads(line)
    assert (record["level"], record["event"], record["exit_code"]) == ("error", "startup_failed", 3)
    assert record["message"].startswith("Redis unreachable at redis://:***@127.0.0.1:1/0")
    assert SECRET not in line


def test_global_options_and_help() -> None:
    """``safesync --redis URL worker ...`` uses the global option (a command-line value,
    unlike its default); ``safesync worker --help`` documents the command."""
    result = subprocess.run(
        [sys.executable, "-m", "safesync_async.cli", "--redis", UNREACHABLE_REDIS, "--json",
         "worker", "tests.worker.apps:effects", "--stream", "s"],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=60, check=False,
        env={k: v for k, v in os.environ.items() if k != "SAFESYNC_REDIS_URL"},
    )  # fmt: skip
    assert result.returncode == 3, result.stderr
    record = json.loads(result.stderr)
    assert record["message"].startswith("Redis unreachable at redis://:***@127.0.0.1:1/0")
    result = subprocess.run(
        [sys.executable, "-m", "safesync_async.cli", "worker", "--help"],
        capture_output=True, text=True, timeout=60, check=True,
        env={**os.environ, "COLUMNS": "200"},
    )  # fmt: skip
    assert "MODULE:APP" in result.stdout and "--workers" in result.stdout
