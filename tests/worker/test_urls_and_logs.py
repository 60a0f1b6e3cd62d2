"""Passwords never reach the output: URLs are shown masked, and every log line (text or
JSON, exceptions included) has known secrets and URL passwords masked."""

from __future__ import annotations

import io
import json
import logging

import pytest

from safesync_async.worker.logs import configure_logging
from safesync_async.worker.settings import LogSettings
from safesync_async.worker.urls import (
    database_url_for_display,
    mask_urls_in,
    redis_url_for_display,
    secrets,
)


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("redis://127.0.0.1:6379/0", "redis://127.0.0.1:6379/0"),
        ("redis://:pw@host:6379/0", "redis://:***@host:6379/0"),
        ("rediss://user:p%40ss@host/1", "rediss://user:***@host/1"),
        ("redis://host/0?password=pw&db=1", "redis://host/0?password=***&db=1"),
        ("unix:///tmp/r.sock?password=pw", "unix:///tmp/r.sock?password=***"),
    ],
)
def test_redis_urls_are_shown_without_password(url: str, shown: str) -> None:
    """The Redis URL keeps everything but the password."""
    assert redis_url_for_display(url) == shown


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("mysql+asyncmy://root@127.0.0.1:3306/test", "mysql+asyncmy://root@127.0.0.1:3306/test"),
        ("mysql+asyncmy://app:pw@db/app", "mysql+asyncmy://app:***@db/app"),
        ("postgresql+asyncpg://u:p%2Fw@db/x?ssl=true", "postgresql+asyncpg://u:***@db/x?ssl=true"),
        ("not a url with :pw@", "(unparseable URL)"),
    ],
)
def test_database_urls_are_shown_without_password(url: str, shown: str) -> None:
    """The database URL keeps everything but the password; an unparseable one shows
    nothing of itself."""
    assert database_url_for_display(url) == shown


def test_secrets_and_urls_in_free_text() -> None:
    """Passwords are collected as written and decoded; any user:password@ is masked."""
    assert secrets("redis://:p%40ss@h/0", None, "mysql://u:x@h/d?password=q") >= {
        "p%40ss", "p@ss", "x", "q",
    }  # fmt: skip
    assert mask_urls_in("failed on mysql://u:hunter2@db/x") == "failed on mysql://u:***@db/x"


def log_lines(log_format: str) -> list[str]:
    stream = io.StringIO()
    root = logging.getLogger()
    saved_handlers, saved_level = root.handlers[:], root.level
    try:
        configure_logging(
            LogSettings(format=log_format, level="INFO"),  # type: ignore[arg-type]
            role="worker-3",
            secrets={"hunter22"},
            stream=stream,
        )
        log = logging.getLogger("safesync_async.test")
        log.info("connected to redis://:hunter22@h/0", extra={"event": "demo", "worker": 3})
        log.warning("the password hunter22 leaked into a message")
        try:
            raise RuntimeError("boom with hunter22")
        except RuntimeError:
            log.exception("crashed")
    finally:
        root.handlers[:] = saved_handlers
        root.setLevel(saved_level)
    return stream.getvalue().splitlines()


def test_json_log_records_are_one_object_per_line_without_secrets() -> None:
    """--log-format json: one JSON object per record with time, level, process, pid,
    message, extra fields and the exception; the secret appears nowhere."""
    lines = log_lines("json")
    records = [json.loads(line) for line in lines]
    assert len(records) == 3
    first = records[0]
    assert (first["level"], first["process"], first["event"], first["worker"]) == (
        "info", "worker-3", "demo", 3,
    )  # fmt: skip
    assert first["message"] == "connected to redis://:***@h/0"
    assert first["time"].endswith("Z") and isinstance(first["pid"], int)
    assert "RuntimeError: boom with ***" in records[2]["exception"]
    assert all("hunter22" not in line for line in lines)


def test_text_log_lines_carry_the_process_and_no_secret() -> None:
    """Text lines name the level and the process; the secret is masked, in tracebacks too."""
    text = "\n".join(log_lines("text"))
    assert " INFO    [worker-3] safesync_async.test: connected to redis://:***@h/0" in text
    assert "RuntimeError: boom with ***" in text
    assert "hunter22" not in text
