"""Validation of table and column names that callers pass as strings.

A name must fully match a conservative pattern (letters, digits, ``_`` and ``$``, not
starting with a digit, at most 64 characters). Validated names are always quoted
by the SQLAlchemy dialect when rendered, so reserved words such as ``order`` work.
Values are never interpolated: they are bound parameters.
"""

from __future__ import annotations

import functools
import re

import sqlalchemy as sa
from sqlalchemy.engine import Dialect as SADialect
from sqlalchemy.sql.elements import quoted_name

from ..errors import InvalidIdentifierError

_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_$]{0,63}")


def validate_identifier(name: object, what: str) -> str:
    """Return ``name`` if it is a safe identifier, else raise InvalidIdentifierError."""
    if not isinstance(name, str) or _IDENTIFIER.fullmatch(name) is None:
        raise InvalidIdentifierError(
            f"invalid {what} name {name!r}: use 1-64 characters from letters, digits, "
            "'_' and '$', not starting with a digit"
        )
    return name


def table_clause(table: str | sa.Table, columns: list[str]) -> sa.TableClause:
    """A quoted table construct with the given (validated) columns.

    ``table`` is a name, optionally schema-qualified (``"billing.accounts"``), or a
    SQLAlchemy :class:`~sqlalchemy.Table` whose columns must include ``columns``.
    """
    if isinstance(table, sa.Table):
        missing = [c for c in columns if c not in table.c]
        if missing:
            raise InvalidIdentifierError(f"table {table.name!r} has no column(s) {missing}")
        return table
    if not isinstance(table, str):
        raise InvalidIdentifierError(f"table must be a name or a sqlalchemy.Table, not {table!r}")
    parts = table.split(".")
    if len(parts) > 2:
        raise InvalidIdentifierError(f"invalid table name {table!r}: use 'table' or 'schema.table'")
    name = validate_identifier(parts[-1], "table")
    schema = validate_identifier(parts[0], "schema") if len(parts) == 2 else ""
    for column in columns:
        validate_identifier(column, "column")
    return sa.table(
        quoted_name(name, quote=True),
        *(sa.column(quoted_name(c, quote=True)) for c in columns),
        schema=quoted_name(schema, quote=True) if schema else None,
    )


@functools.lru_cache(maxsize=1024)
def quoted_table(table: str, dialect: SADialect) -> str:
    """A validated table name (``"table"`` or ``"schema.table"``), quoted for ``dialect``."""
    parts = table.split(".") if isinstance(table, str) else [table]
    if len(parts) > 2:
        raise InvalidIdentifierError(f"invalid table name {table!r}: use 'table' or 'schema.table'")
    what = ["schema", "table"] if len(parts) == 2 else ["table"]
    quote = dialect.identifier_preparer.quote_identifier
    return ".".join(quote(validate_identifier(p, w)) for p, w in zip(parts, what, strict=True))


@functools.lru_cache(maxsize=4096)
def quoted_column(column: str, dialect: SADialect) -> str:
    """A validated column name, quoted for ``dialect``."""
    return dialect.identifier_preparer.quote_identifier(validate_identifier(column, "column"))
