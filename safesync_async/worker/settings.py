"""The runner's settings and where each comes from.

Precedence, highest first: a command-line option, an environment variable, the
:class:`WorkerApp` in the user's module, the built-in default. :func:`resolve_settings`
is the only place that applies it.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, TypeVar, cast

from ..errors import ConfigurationError
from ..queue.config import QueueConfig
from .app import WorkerApp

__all__ = [
    "DEFAULT_DATABASE_URL",
    "DEFAULT_REDIS_URL",
    "ENVIRONMENT",
    "LogSettings",
    "WorkerSettings",
    "build_queue_config",
    "engine_options",
    "resolve_log_settings",
    "resolve_settings",
]

DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"
DEFAULT_DATABASE_URL = "mysql+asyncmy://root@127.0.0.1:3306/test"
#: Seconds the runner waits beyond the drain timeout before killing a stopping process.
STOP_MARGIN = 15.0

#: setting -> environment variable
ENVIRONMENT = {
    "stream": "SAFESYNC_STREAM",
    "group": "SAFESYNC_GROUP",
    "redis_url": "SAFESYNC_REDIS_URL",
    "database_url": "SAFESYNC_DATABASE_URL",
    "workers": "SAFESYNC_WORKERS",
    "concurrency": "SAFESYNC_CONCURRENCY",
    "batch_size": "SAFESYNC_BATCH_SIZE",
    "drain_timeout": "SAFESYNC_DRAIN_TIMEOUT",
    "stop_timeout": "SAFESYNC_STOP_TIMEOUT",
    "http_host": "SAFESYNC_HTTP_HOST",
    "http_port": "SAFESYNC_HTTP_PORT",
    "log_format": "SAFESYNC_LOG_FORMAT",
    "log_level": "SAFESYNC_LOG_LEVEL",
}

LogFormat = Literal["text", "json"]
Source = Literal["option", "environment", "app", "default"]
_T = TypeVar("_T")


@dataclass(frozen=True, slots=True)
class LogSettings:
    """How the runner and its processes log."""

    format: LogFormat = "text"
    level: str = "INFO"


@dataclass(frozen=True, kw_only=True)
class WorkerSettings:
    """Everything the runner and its processes need, resolved. ``sources`` says where
    each setting came from (option, environment, app or default)."""

    target: str
    app_dir: str
    stream: str
    group: str
    redis_url: str
    database_url: str | None  # None: the handler takes no session
    workers: int = 1
    concurrency: int = 16
    batch_size: int = 1
    drain_timeout: float = 30.0
    stop_timeout: float = 30.0 + STOP_MARGIN
    http_host: str = "127.0.0.1"
    http_port: int | None = None
    log: LogSettings = field(default_factory=LogSettings)
    reload: bool = False
    reload_dirs: tuple[str, ...] = ()
    sources: Mapping[str, Source] = field(default_factory=dict)

    def to_json_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["sources"] = dict(self.sources)
        return data

    @classmethod
    def from_json_dict(cls, data: Mapping[str, Any]) -> WorkerSettings:
        values = dict(data)
        values["log"] = LogSettings(**values["log"])
        values["reload_dirs"] = tuple(values["reload_dirs"])
        return cls(**values)


class _Resolver:
    """Looks a setting up in the options, the environment, then the app."""

    def __init__(
        self, options: Mapping[str, object], environ: Mapping[str, str], app: WorkerApp | None
    ) -> None:
        self._options = options
        self._environ = environ
        self._app = app
        self.sources: dict[str, Source] = {}

    def get(self, name: str, parse: Callable[[str, object], _T], default: _T) -> _T:
        value = self._options.get(name)
        source: Source = "option"
        if value is None and name in ENVIRONMENT and self._environ.get(ENVIRONMENT[name]):
            value, source = self._environ[ENVIRONMENT[name]], "environment"
        if value is None and self._app is not None:
            value, source = getattr(self._app, name, None), "app"
        if value is None:
            self.sources[name] = "default"
            return default
        self.sources[name] = source
        where = f"${ENVIRONMENT[name]}" if source == "environment" else _OPTION_NAMES.get(name)
        return parse(where or name, value)


_OPTION_NAMES = {
    "stream": "--stream",
    "group": "--group",
    "redis_url": "--redis",
    "database_url": "--database",
    "workers": "--workers",
    "concurrency": "--concurrency",
    "batch_size": "--batch-size",
    "drain_timeout": "--drain-timeout",
    "stop_timeout": "--stop-timeout",
    "http_host": "--http-host",
    "http_port": "--http-port",
    "log_format": "--log-format",
    "log_level": "--log-level",
}


def resolve_log_settings(options: Mapping[str, object], environ: Mapping[str, str]) -> LogSettings:
    """The log format and level (from options and the environment only: logging starts
    before the user's module is imported)."""
    resolver = _Resolver(options, environ, None)
    return LogSettings(
        format=cast(LogFormat, resolver.get("log_format", _log_format, "text")),
        level=resolver.get("log_level", _log_level, "INFO"),
    )


def resolve_settings(
    target: str, app: WorkerApp, options: Mapping[str, object], environ: Mapping[str, str]
) -> WorkerSettings:
    """Apply the precedence option > environment > app > default to every setting.

    ``options`` maps setting names to command-line values (None: not given).
    Raises :class:`ConfigurationError` naming the option or variable that is wrong.
    """
    r = _Resolver(options, environ, app)
    stream = r.get("stream", _text, "")
    group = r.get("group", _text, "")
    for name, value in (("stream", stream), ("group", group)):
        if not value:
            raise ConfigurationError(
                f"no {name}: pass {_OPTION_NAMES[name]}, set {ENVIRONMENT[name]}, or declare "
                f"WorkerApp({name}=...)"
            )
    drain_timeout = r.get("drain_timeout", _positive_float, 30.0)
    database_url = r.get("database_url", _text, DEFAULT_DATABASE_URL)
    app_dir = str(options.get("app_dir") or ".")
    reload_dirs = tuple(str(d) for d in cast(Any, options.get("reload_dirs") or ()))
    return WorkerSettings(
        target=target,
        app_dir=os.path.abspath(app_dir),
        stream=stream,
        group=group,
        redis_url=r.get("redis_url", _text, DEFAULT_REDIS_URL),
        database_url=database_url if app.needs_session else None,
        workers=r.get("workers", _count, 1),
        concurrency=r.get("concurrency", _count, 16),
        batch_size=r.get("batch_size", _count, 1),
        drain_timeout=drain_timeout,
        stop_timeout=r.get("stop_timeout", _positive_float, drain_timeout + STOP_MARGIN),
        http_host=r.get("http_host", _text, "127.0.0.1"),
        http_port=r.get("http_port", _port, cast(int | None, None)),
        log=resolve_log_settings(options, environ),
        reload=bool(options.get("reload")),
        reload_dirs=tuple(os.path.abspath(d) for d in reload_dirs or (app_dir,)),
        sources=dict(r.sources),
    )


# -- parsers: (where the value came from, the value) -> the typed value ------------------


def _text(where: str, value: object) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ConfigurationError(f"{where} must be a non-empty string, got {value!r}")
    return value.strip()


def _integer(where: str, value: object) -> int:
    if isinstance(value, bool):
        raise ConfigurationError(f"{where} must be an integer, got {value!r}")
    if isinstance(value, int):
        return value
    try:
        return int(str(value).strip())
    except ValueError:
        raise ConfigurationError(f"{where} must be an integer, got {value!r}") from None


def _count(where: str, value: object) -> int:
    number = _integer(where, value)
    if number < 1:
        raise ConfigurationError(f"{where} must be at least 1, got {number}")
    return number


def _port(where: str, value: object) -> int:
    number = _integer(where, value)
    if not 0 <= number <= 65535:
        raise ConfigurationError(f"{where} must be a port number (0-65535), got {number}")
    return number


def _positive_float(where: str, value: object) -> float:
    try:
        number = float(cast(Any, value)) if not isinstance(value, bool) else -1.0
    except (TypeError, ValueError):
        number = -1.0
    if not number > 0:
        raise ConfigurationError(f"{where} must be a number of seconds > 0, got {value!r}")
    return number


def _log_format(where: str, value: object) -> str:
    text = _text(where, value).lower()
    if text not in ("text", "json"):
        raise ConfigurationError(f"{where} must be 'text' or 'json', got {value!r}")
    return text


def _log_level(where: str, value: object) -> str:
    text = _text(where, value).upper()
    if not isinstance(logging.getLevelNamesMapping().get(text), int):
        raise ConfigurationError(
            f"{where} must be a logging level (DEBUG, INFO, WARNING, ERROR), got {value!r}"
        )
    return text


def build_queue_config(app: WorkerApp, settings: WorkerSettings, consumer_name: str) -> QueueConfig:
    """The QueueConfig of one worker process: the app's ``queue_options`` with the
    runner's settings and the process's own consumer name."""
    return QueueConfig(
        **app.queue_options,
        stream_key=settings.stream,
        consumer_group=settings.group,
        consumer_name=consumer_name,
        concurrency=settings.concurrency,
        batch_size=settings.batch_size,
        drain_timeout=settings.drain_timeout,
    )


def engine_options(app: WorkerApp, settings: WorkerSettings) -> dict[str, Any]:
    """Keyword arguments for :func:`create_engine`: a pool as large as the concurrency,
    unless the app says otherwise."""
    return {"pool_size": settings.concurrency, "max_overflow": 0, **app.engine_options}
