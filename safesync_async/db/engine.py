"""create_engine: an AsyncEngine tuned for DbSession."""

from __future__ import annotations

import time
from typing import Any

from sqlalchemy import event
from sqlalchemy import exc as sa_exc
from sqlalchemy.engine import make_url
from sqlalchemy.engine.interfaces import DBAPIConnection
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine
from sqlalchemy.pool import ConnectionPoolEntry, PoolProxiedConnection, PoolResetState

from ..errors import ConfigurationError
from ._drivers import driver_state
from .dialects import dialect_for_url

__all__ = ["create_engine"]

_CHECKED_IN_AT = "safesync_checked_in_at"


def create_engine(
    url: str,
    *,
    pool_size: int = 10,
    max_overflow: int = 10,
    ping_after: float | None = 10.0,
    connect_timeout: float = 10.0,
    **kwargs: Any,
) -> AsyncEngine:
    """``create_async_engine`` with pool settings that suit :class:`DbSession`.

    * **No blind ROLLBACK on every return to the pool.** SQLAlchemy's default
      ``reset_on_return="rollback"`` costs a round trip per transaction, although
      DbSession always ends its transaction itself. Here the reset rolls back only when
      the server reports a transaction still open (or cannot tell).
    * **Liveness check only where it matters.** Instead of ``pool_pre_ping`` (a ping
      on every checkout), a connection idle for more than ``ping_after`` seconds is
      pinged before use and replaced if dead; ``None`` disables it.
    * A bounded connect time (``connect_timeout`` seconds).

    Other keyword arguments go to ``create_async_engine`` unchanged. A URL whose driver
    is missing or not an asyncio driver raises :class:`ConfigurationError` saying which
    URL form or extra to use.
    """
    connect_args = dict(kwargs.pop("connect_args", {}))
    timeout_arg = dialect_for_url(url).connect_timeout_argument
    if timeout_arg is not None:
        connect_args.setdefault(timeout_arg, connect_timeout)
    try:
        engine = create_async_engine(
            url,
            pool_size=pool_size,
            max_overflow=max_overflow,
            pool_reset_on_return=None,
            connect_args=connect_args,
            **kwargs,
        )
    except (ImportError, sa_exc.InvalidRequestError, sa_exc.NoSuchModuleError) as exc:
        raise ConfigurationError(_driver_advice(url, exc)) from exc
    pool = engine.sync_engine.pool

    @event.listens_for(pool, "reset")
    def reset(
        dbapi_connection: DBAPIConnection, record: ConnectionPoolEntry, state: PoolResetState
    ) -> None:
        if not state.asyncio_safe or state.terminate_only:
            return
        executor = driver_state(record).executor
        if executor is None or executor.in_transaction() is not False:
            dbapi_connection.rollback()

    @event.listens_for(pool, "checkin")
    def checkin(dbapi_connection: DBAPIConnection | None, record: ConnectionPoolEntry) -> None:
        record.info[_CHECKED_IN_AT] = time.monotonic()

    if ping_after is not None:

        @event.listens_for(pool, "checkout")
        def checkout(
            dbapi_connection: DBAPIConnection,
            record: ConnectionPoolEntry,
            proxy: PoolProxiedConnection,
        ) -> None:
            idle_since = record.info.get(_CHECKED_IN_AT)
            if idle_since is None or time.monotonic() - idle_since < ping_after:
                return
            try:
                alive = engine.dialect.do_ping(dbapi_connection)
            except Exception as exc:
                alive = False
                cause: Exception | None = exc
            else:
                cause = None
            if not alive:
                message = f"connection idle for {ping_after}+ s is dead"
                raise sa_exc.DisconnectionError(message) from cause

    return engine


# The asyncio driver for each backend, and what installs it.
_ASYNC_DRIVERS = {
    "mysql": ("asyncmy", "asyncmy is installed with safesync-async"),
    "mariadb": ("asyncmy", "asyncmy is installed with safesync-async"),
    "postgresql": (
        "asyncpg",
        "asyncpg comes with the postgres extra: pip install 'safesync-async[postgres]'",
    ),
}


def _driver_advice(url: str, exc: Exception) -> str:
    """What to do when SQLAlchemy could not load an asyncio driver for ``url``."""
    parsed = make_url(url)
    backend, driver = parsed.get_backend_name(), parsed.get_driver_name()
    shown = parsed.render_as_string(hide_password=True)
    wanted, install = _ASYNC_DRIVERS[backend]
    suggested = parsed.set(drivername=f"{backend}+{wanted}").render_as_string(hide_password=True)
    if driver == wanted:
        return f"the {wanted} driver for {shown} is not installed ({exc}): {install}"
    return (
        f"{shown} selects the {driver!r} driver, which is missing or not an asyncio driver "
        f"({exc}); use {suggested} ({install})"
    )
