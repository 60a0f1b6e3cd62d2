"""Per-backend behaviour. Add a backend by adding a module and a line to ``_BY_NAME``."""

from __future__ import annotations

from sqlalchemy.engine import Dialect as SADialect
from sqlalchemy.engine import make_url

from ...errors import ConfigurationError
from .base import AdvisoryLockSql, AdvisoryOutcome, ClassifiedError, Dialect, ErrorKind
from .mysql import MySQLDialect
from .postgresql import PostgreSQLDialect

__all__ = [
    "AdvisoryLockSql",
    "AdvisoryOutcome",
    "ClassifiedError",
    "Dialect",
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
    return _by_backend_name(sa_dialect.name)


def dialect_for_url(url: str) -> Dialect:
    """The library dialect for a database URL, before any engine exists."""
    return _by_backend_name(make_url(url).get_backend_name())


def _by_backend_name(backend: str) -> Dialect:
    found = _BY_NAME.get(backend)
    if found is None:
        supported = ", ".join(sorted(_BY_NAME))
        raise ConfigurationError(
            f"database backend {backend!r} is not supported; supported: {supported}"
        )
    return found
