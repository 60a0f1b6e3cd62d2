"""Per-backend behaviour. Add a backend by adding a module and a line to ``_BY_NAME``."""

from __future__ import annotations

from sqlalchemy.engine import Dialect as SADialect

from ...errors import ConfigurationError
from .base import ClassifiedError, Dialect, DirectExecutor, ErrorKind
from .mysql import MySQLDialect

__all__ = ["ClassifiedError", "Dialect", "DirectExecutor", "ErrorKind", "dialect_for"]

_MYSQL = MySQLDialect()
_BY_NAME: dict[str, Dialect] = {"mysql": _MYSQL, "mariadb": _MYSQL}


def dialect_for(sa_dialect: SADialect) -> Dialect:
    """The library dialect for a SQLAlchemy dialect, or ConfigurationError."""
    try:
        return _BY_NAME[sa_dialect.name]
    except KeyError:
        supported = ", ".join(sorted(_BY_NAME))
        raise ConfigurationError(
            f"database backend {sa_dialect.name!r} is not supported; supported: {supported}"
        ) from None
