"""Optimistic concurrency control: update a row only if its version is unchanged."""

from __future__ import annotations

import functools
from collections.abc import Mapping
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Dialect as SADialect
from sqlalchemy.sql.elements import ClauseElement

from ..errors import ConfigurationError, VersionConflictError
from .identifiers import quoted_column, quoted_table, table_clause
from .session import DbSession, Statement

__all__ = ["occ_update"]


async def occ_update(
    session: DbSession,
    table: str | sa.Table,
    id_column: str,
    id_value: Any,
    version_column: str,
    version_value: int,
    updates: Mapping[str, Any],
    *,
    raise_on_conflict: bool = False,
) -> int:
    """``UPDATE table SET updates..., version = version + 1 WHERE id = ? AND version = ?``.

    Returns the number of rows matched: 1 on success, 0 when the version moved on
    (or the row is gone). With ``raise_on_conflict=True`` a 0 raises
    :class:`VersionConflictError` instead, which is what
    :func:`retry_transaction` retries on.

    Names are validated and quoted; every value is a bound parameter whose name is
    generated, so no column name (``id_value``, ``version``...) can collide with
    one. ``updates`` values may also be SQL expressions, e.g.
    ``{"balance": sa.column("balance") + 10}``. The version bump makes the matched
    count equal the changed count even on MySQL, where CLIENT_FOUND_ROWS counts
    unchanged rows. For a table given by name and plain values, the SQL text is built
    once per table and column set and reused.
    """
    if not updates:
        raise ConfigurationError("occ_update needs at least one column in 'updates'")
    clashing = {id_column, version_column} & set(updates)
    if clashing:
        raise ConfigurationError(
            f"occ_update cannot set the id or version column directly: {sorted(clashing)}"
        )
    if isinstance(version_value, bool) or not isinstance(version_value, int):
        raise ConfigurationError(f"version_value must be an int, got {version_value!r}")
    statement: Statement
    params: dict[str, Any] | None
    if isinstance(table, str) and not any(isinstance(v, ClauseElement) for v in updates.values()):
        statement = _occ_sql(session.sa_dialect, table, id_column, version_column, tuple(updates))
        params = {f"ss_set_{i}_": value for i, value in enumerate(updates.values())}
        params["ss_id_"] = id_value
        params["ss_version_"] = version_value
    else:
        statement = _occ_construct(
            table, id_column, id_value, version_column, version_value, updates
        )
        params = None
    core = session.core
    matched = (await core.run(statement, params)).rowcount
    if matched == 0:
        core.metrics.inc("occ_conflicts", core.operation)
        if raise_on_conflict:
            raise VersionConflictError(
                f"optimistic update of {_table_name(table)} {id_column}={id_value!r} matched no "
                f"row at {version_column}={version_value}: the row changed or is gone; "
                "re-read it in a new transaction"
            )
    return matched


# Explicit bind names end in "_": SQLAlchemy's generated names end in a digit, and column
# names never become bind names here, so nothing can collide.
@functools.lru_cache(maxsize=1024)
def _occ_sql(
    dialect: SADialect, table: str, id_column: str, version_column: str, columns: tuple[str, ...]
) -> str:
    version = quoted_column(version_column, dialect)
    assignments = [f"{quoted_column(c, dialect)} = :ss_set_{i}_" for i, c in enumerate(columns)]
    assignments.append(f"{version} = {version} + 1")
    return (
        f"UPDATE {quoted_table(table, dialect)} SET {', '.join(assignments)} "
        f"WHERE {quoted_column(id_column, dialect)} = :ss_id_ AND {version} = :ss_version_"
    )


def _occ_construct(
    table: str | sa.Table,
    id_column: str,
    id_value: Any,
    version_column: str,
    version_value: int,
    updates: Mapping[str, Any],
) -> sa.Update:
    """The statement as a SQLAlchemy construct: for a ``Table`` (its column types bind the
    values) or when some values are SQL expressions."""
    selectable = table_clause(table, [id_column, version_column, *updates])
    version = selectable.c[version_column]
    values: dict[Any, Any] = {
        selectable.c[name]: value
        if isinstance(value, ClauseElement)
        else sa.bindparam(f"ss_set_{index}_", value)
        for index, (name, value) in enumerate(updates.items())
    }
    values[version] = version + sa.literal_column("1")
    return (
        sa.update(selectable)
        .where(
            selectable.c[id_column] == sa.bindparam("ss_id_", id_value),
            version == sa.bindparam("ss_version_", version_value),
        )
        .values(values)
    )


def _table_name(table: str | sa.Table) -> str:
    return table if isinstance(table, str) else table.name
