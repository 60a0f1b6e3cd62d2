"""Settings resolution: option > environment > WorkerApp > default, one place, with
errors that name the option or variable at fault."""

from __future__ import annotations

from typing import Any

import pytest

from safesync_async import ConfigurationError, DbSession, QueueMessage, WorkerApp
from safesync_async.worker.settings import (
    DEFAULT_REDIS_URL,
    STOP_MARGIN,
    build_queue_config,
    resolve_log_settings,
    resolve_settings,
)


async def with_session(message: QueueMessage[Any], session: DbSession) -> None:
    """A handler that needs the database."""


async def without_session(message: QueueMessage[Any]) -> None:
    """A handler that does not."""


def app(**overrides: Any) -> WorkerApp:
    settings: dict[str, Any] = {"stream": "app-stream", "group": "app-group", "concurrency": 4}
    settings.update(overrides)
    return WorkerApp(handler=with_session, **settings)


def test_option_beats_environment_beats_app_beats_default() -> None:
    """Each setting takes the first of: the command-line option, the environment
    variable, the app's value, the default; ``sources`` records which."""
    environ = {"SAFESYNC_STREAM": "env-stream", "SAFESYNC_CONCURRENCY": "6",
               "SAFESYNC_WORKERS": "3"}  # fmt: skip
    options = {"stream": "option-stream", "workers": None}
    settings = resolve_settings("m:app", app(), options, environ)
    assert settings.stream == "option-stream"  # option over environment
    assert settings.concurrency == 6  # environment over app
    assert settings.workers == 3  # environment over default
    assert settings.group == "app-group"  # app over default
    assert settings.redis_url == DEFAULT_REDIS_URL
    assert settings.batch_size == 1
    assert settings.sources.items() >= {
        "stream": "option", "concurrency": "environment", "workers": "environment",
        "group": "app", "redis_url": "default",
    }.items()  # fmt: skip


def test_stop_timeout_follows_the_drain_timeout() -> None:
    """Without a stop timeout, the runner waits the drain timeout plus a margin."""
    settings = resolve_settings("m:app", app(drain_timeout=7.5), {}, {})
    assert (settings.drain_timeout, settings.stop_timeout) == (7.5, 7.5 + STOP_MARGIN)


def test_database_url_only_for_session_handlers() -> None:
    """A handler without a session needs no database: its settings carry no URL."""
    options = {"stream": "s", "group": "g"}
    environ = {"SAFESYNC_DATABASE_URL": "mysql+asyncmy://u:p@h/db"}
    settings = resolve_settings("m:h", WorkerApp(handler=without_session), options, environ)
    assert settings.database_url is None


@pytest.mark.parametrize(
    ("options", "environ", "message"),
    [
        ({"stream": None}, {}, "no stream: pass --stream, set SAFESYNC_STREAM"),
        ({}, {"SAFESYNC_WORKERS": "two"}, "$SAFESYNC_WORKERS must be an integer"),
        ({"workers": 0}, {}, "--workers must be at least 1"),
        ({}, {"SAFESYNC_DRAIN_TIMEOUT": "-1"}, "$SAFESYNC_DRAIN_TIMEOUT must be a number"),
        ({"http_port": 70_000}, {}, "--http-port must be a port number"),
        ({}, {"SAFESYNC_LOG_FORMAT": "xml"}, "$SAFESYNC_LOG_FORMAT must be 'text' or 'json'"),
        ({"log_level": "LOUD"}, {}, "--log-level must be a logging level"),
    ],
)
def test_bad_values_name_their_source(
    options: dict[str, Any], environ: dict[str, str], message: str
) -> None:
    """An invalid value is a ConfigurationError naming the option or variable."""
    declared = app(stream=None) if "stream" in options else app()
    with pytest.raises(ConfigurationError, match=message.replace("$", r"\$")):
        resolve_settings("m:app", declared, options, environ)


def test_log_settings_come_from_options_and_environment() -> None:
    """The log format and level resolve before the app is imported."""
    assert resolve_log_settings({}, {"SAFESYNC_LOG_FORMAT": "JSON"}).format == "json"
    assert resolve_log_settings({"log_level": "debug"}, {}).level == "DEBUG"


def test_queue_config_combines_app_options_and_settings() -> None:
    """The app's queue_options and the runner's settings make each process's QueueConfig;
    settings round-trip through the JSON a worker process receives."""
    declared = app(queue_options={"max_deliveries": 2, "block_ms": 100})
    settings = resolve_settings("m:app", declared, {"batch_size": 5}, {})
    config = build_queue_config(declared, settings, "host-1-0")
    assert (config.stream_key, config.consumer_group, config.consumer_name) == (
        "app-stream", "app-group", "host-1-0",
    )  # fmt: skip
    assert (config.concurrency, config.batch_size, config.max_deliveries) == (4, 5, 2)
    assert type(settings).from_json_dict(settings.to_json_dict()) == settings


def test_app_refuses_runner_owned_and_unknown_queue_options() -> None:
    """queue_options may not set what the runner sets, nor what QueueConfig lacks."""
    with pytest.raises(ConfigurationError, match="set by the runner"):
        WorkerApp(queue_options={"consumer_name": "x"})
    with pytest.raises(ConfigurationError, match="not QueueConfig settings"):
        WorkerApp(queue_options={"speed": "fast"})
