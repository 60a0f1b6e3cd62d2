"""``safesync worker``: resolve the app and the settings, check the servers, then
supervise the worker processes. Every start-up problem is one line and an exit code
before any process is started."""

from __future__ import annotations

import asyncio
import logging
import os
import sys
from collections.abc import Mapping

from ..cli.operations import EXIT_ERROR, EXIT_USAGE
from ..errors import ConfigurationError, SafeSyncError
from .checks import check_servers
from .loading import load_app, use_app_dir
from .logs import Redactor, configure_logging
from .settings import (
    ENVIRONMENT,
    LogSettings,
    build_queue_config,
    resolve_log_settings,
    resolve_settings,
)
from .slots import consumer_name
from .supervisor import Supervisor
from .urls import secrets

__all__ = ["run_worker"]

_log = logging.getLogger("safesync_async.worker")


def run_worker(
    target: str, options: Mapping[str, object], *, environ: Mapping[str, str] | None = None
) -> int:
    """Run ``target`` (``module:attribute``) as configured by ``options`` (setting name ->
    command-line value, None when not given) and the environment; the exit code:
    0 stopped by a signal, 1 a worker kept failing, 2 bad configuration (import path,
    handler signature, settings), 3 a server unreachable, 130 killed by a second signal."""
    environ = os.environ if environ is None else environ
    known_secrets = secrets(
        *(str(options.get(name) or "") for name in ("redis_url", "database_url")),
        *(environ.get(ENVIRONMENT[name]) for name in ("redis_url", "database_url")),
    )
    try:
        log_settings = resolve_log_settings(options, environ)
    except ConfigurationError as exc:
        return _startup_failed(LogSettings(), known_secrets, exc, EXIT_USAGE)
    configure_logging(log_settings, role="runner", secrets=known_secrets)
    try:
        use_app_dir(str(options.get("app_dir") or "."))
        app = load_app(target)
        settings = resolve_settings(target, app, options, environ)
        known_secrets |= secrets(settings.redis_url, settings.database_url)
        configure_logging(log_settings, role="runner", secrets=known_secrets)
        build_queue_config(app, settings, consumer_name(0))  # validates the settings
        asyncio.run(check_servers(settings))
    except ConfigurationError as exc:
        return _startup_failed(log_settings, known_secrets, exc, EXIT_USAGE)
    except SafeSyncError as exc:
        return _startup_failed(log_settings, known_secrets, exc, EXIT_ERROR)
    try:
        return asyncio.run(Supervisor(settings).run())
    except OSError as exc:  # e.g. the HTTP port is taken
        return _startup_failed(log_settings, known_secrets, exc, EXIT_ERROR)


def _startup_failed(
    log_settings: LogSettings, known_secrets: set[str], exc: BaseException, code: int
) -> int:
    """One line: ``error: ...`` (text) or a JSON record (json), never a password."""
    message = " ".join(str(exc).split()) or type(exc).__name__
    if log_settings.format == "json":
        configure_logging(log_settings, role="runner", secrets=known_secrets)
        _log.error(message, extra={"event": "startup_failed", "exit_code": code})
    else:
        print(f"error: {Redactor(known_secrets)(message)}", file=sys.stderr)
    return code
