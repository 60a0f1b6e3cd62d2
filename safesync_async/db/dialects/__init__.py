"""Per-backend behaviour. Add a backend by adding a module and a line to ``_BY_NAME``."""

from __future__ import annotations

from sqlalchemy.engine import Dialect as SADialect
from sqlalchemy.engine import make_url

from ...errors import ConfigurationError
from .base import AdvisoryOutcome, ClassifiedError, Dialect, DirectExecutor, ErrorKind
from .mysql import MySQLDialect
from .postgresql import PostgreSQLDialect

__all__ = [
    "AdvisoryOutcome",
    "ClassifiedError",
    "Dialect",
    "DirectExecutor",
    "ErrorKind",
    "dialect_for",
    "dialect_for_url",
]

_MYSQL = MySQLDialect()
_BY_NAME: dict[str, Dialect] = {
    "mysql": _MYSQL,
    "mariadb": _MYSQL,
    "postgresql": PostgreSQLDialect(),
}


def dialect_for(sa_dialect: SADialect) -> Dialect:
    """The library dialect for a SQLAlchemy dialect, or ConfigurationError."""
    try:
        return _BY_NAME[sa_dialect.name]
    except KeyError:
        supported = ", ".join(sorted(_BY_NAME))
        raise ConfigurationError(
            f"database backend {sa_dialect.name!r} is not supported; supported: {supported}"
        ) from None


def dialect_for_url(url: str) -> Dialect:
    """The library dialect for a database URL, before any engine exists."""
    backend = make_url(url).get_backend_name()
    try:
        return _BY_NAME[backend]
    except KeyError:
        supported = ", ".join(sorted(_BY_NAME))
        raise ConfigurationError(
            f"database backend {backend!r} is not supported; supported: {supported}"
        ) from None
