"""Before any process is started: can the servers be reached? Each failure names the
server and its URL with the password masked."""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any

from sqlalchemy import exc as sa_exc

from ..db.engine import create_engine
from ..db.session import DbSession
from ..errors import (
    ConfigurationError,
    DatabaseError,
    DatabaseUnavailableError,
    QueueConnectionError,
    QueueError,
    SafeSyncError,
)
from ..queue.client import ServerInfo, create_redis_client, server_info
from .settings import WorkerSettings
from .urls import database_url_for_display, redis_url_for_display

__all__ = ["CHECK_TIMEOUT", "check_database", "check_redis", "check_servers"]

#: Seconds each server gets to answer at start-up.
CHECK_TIMEOUT = 5.0


async def check_servers(settings: WorkerSettings, within: float = CHECK_TIMEOUT) -> None:
    """Check Redis and (if the handler takes a session) the database, at the same time.
    Raises the library's error for the first problem, mentioning the other one too."""
    checks: list[Coroutine[Any, Any, object]] = [check_redis(settings.redis_url, within)]
    if settings.database_url is not None:
        checks.append(check_database(settings.database_url, within))
    results = await asyncio.gather(*checks, return_exceptions=True)
    errors = [result for result in results if isinstance(result, BaseException)]
    if not errors:
        return
    for error in errors:
        if not isinstance(error, SafeSyncError):
            raise error
    first = errors[0]
    if len(errors) > 1:
        first.args = ("; ".join(str(error) for error in errors),)
    raise first


async def check_redis(url: str, within: float = CHECK_TIMEOUT) -> ServerInfo:
    """Connect, and check the server has what the consumer needs (Redis 6.2+)."""
    shown = redis_url_for_display(url)
    try:
        client = create_redis_client(url, socket_connect_timeout=within)
    except ValueError as exc:
        raise ConfigurationError(f"invalid Redis URL {shown}: {exc}") from None
    try:
        async with asyncio.timeout(within):
            return await server_info(client)
    except TimeoutError:
        raise QueueConnectionError(
            f"Redis unreachable at {shown}: no answer within {within:g} s"
        ) from None
    except QueueConnectionError as exc:
        raise QueueConnectionError(
            f"Redis unreachable at {shown}: {_cause(exc.__cause__ or exc)}"
        ) from None
    except QueueError as exc:
        raise QueueError(f"Redis at {shown} cannot be used: {_cause(exc)}") from None
    finally:
        await client.aclose()


async def check_database(url: str, within: float = CHECK_TIMEOUT) -> None:
    """Connect and run ``SELECT 1``."""
    shown = database_url_for_display(url)
    try:
        engine = create_engine(url, pool_size=1, max_overflow=0, connect_timeout=within)
    except ImportError as exc:
        raise ConfigurationError(
            f"the database URL {shown} needs a driver that is not installed: {exc}"
        ) from None
    except (ValueError, sa_exc.ArgumentError) as exc:
        raise ConfigurationError(f"invalid database URL {shown}: {exc}") from None
    try:
        async with asyncio.timeout(within + 1):
            async with DbSession(engine, registry=None) as session:
                await session.execute("SELECT 1")
    except TimeoutError:
        raise DatabaseUnavailableError(
            f"database unreachable at {shown}: no answer within {within:g} s"
        ) from None
    except DatabaseUnavailableError as exc:
        raise DatabaseUnavailableError(
            f"database unreachable at {shown}: {_cause(exc)}",
            errno=exc.errno,
            sqlstate=exc.sqlstate,
        ) from None
    except DatabaseError as exc:
        raise DatabaseError(
            f"database at {shown} cannot be used: {_cause(exc)}",
            errno=exc.errno,
            sqlstate=exc.sqlstate,
        ) from None
    finally:
        await engine.dispose()


def _cause(exc: BaseException) -> str:
    """The most specific message: the library's own, else the driver's."""
    return " ".join(str(exc).split()) or type(exc).__name__
