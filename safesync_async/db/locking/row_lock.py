"""RowLock: ``SELECT ... FOR UPDATE`` on one row, with NOWAIT / SKIP LOCKED."""

from __future__ import annotations

import functools
import time
from collections.abc import Mapping, Sequence
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Dialect as SADialect

from ... import tracing
from ...errors import ConfigurationError, DatabaseError, LockNotAvailableError, MultipleRowsError
from ..dialects import Dialect
from ..identifiers import quoted_column, quoted_table, table_clause
from ..session import DbSession, Statement

__all__ = ["RowLock"]


class RowLock:
    """Lock one row for the rest of the session's transaction and return it.

    ``await RowLock(session, "orders", {"id": 42}).acquire()`` runs
    ``SELECT * FROM `orders` WHERE `id` = ? FOR UPDATE`` and returns the row as a
    dict, or ``None`` if no row matches. The lock is released by the commit or
    rollback. Names are validated and quoted; values are bound parameters (``None``
    matches NULL). The SQL for a given table, columns and options is built once and
    reused.

    Lock several rows of one transaction in one global order (for example by primary
    key), or two transactions locking the same rows in opposite orders deadlock.

    Args:
        session: the active DbSession.
        table: a table name (``"orders"``, ``"shop.orders"``) or a SQLAlchemy ``Table``.
        where: column -> value equalities identifying exactly one row (not empty).
        nowait: fail at once with :class:`LockNotAvailableError` if the row is locked.
        skip_locked: return ``None`` at once if the row is locked.
        columns: columns to return (default: all).

    Raises :class:`MultipleRowsError` if ``where`` matches more than one row
    (they are locked until the transaction ends), and :class:`ConfigurationError`
    if the server lacks NOWAIT / SKIP LOCKED.
    """

    __slots__ = ("_nowait", "_params", "_session", "_skip_locked", "_statement", "_table_name")

    def __init__(
        self,
        session: DbSession,
        table: str | sa.Table,
        where: Mapping[str, Any],
        *,
        nowait: bool = False,
        skip_locked: bool = False,
        columns: Sequence[str] | None = None,
    ) -> None:
        if nowait and skip_locked:
            raise ConfigurationError("RowLock takes nowait or skip_locked, not both")
        if not isinstance(where, Mapping) or not where:
            raise ConfigurationError(
                "RowLock needs a non-empty 'where' mapping; without it every row would be locked"
            )
        wanted = tuple(columns) if columns is not None else ()
        self._session = session
        self._nowait = nowait
        self._skip_locked = skip_locked
        self._params: dict[str, Any] | None
        self._statement: Statement
        if isinstance(table, str):
            self._table_name = table
            nulls = tuple(value is None for value in where.values())
            self._statement = _row_lock_sql(
                session.dialect, session.sa_dialect, table, tuple(where), nulls, wanted,
                nowait, skip_locked,
            )  # fmt: skip
            self._params = {
                f"w{index}": value
                for index, value in enumerate(where.values())
                if value is not None
            }
        else:
            self._table_name = getattr(table, "name", str(table))
            self._statement = _row_lock_construct(table, where, wanted, nowait, skip_locked)
            self._params = None

    async def acquire(self) -> dict[str, Any] | None:
        """Take the lock; return the row, or ``None`` (no such row, or skipped)."""
        core = self._session.core
        metrics = core.metrics
        core.dialect.check_row_lock_options(
            core.sa_dialect, nowait=self._nowait, skip_locked=self._skip_locked
        )
        started = time.perf_counter()
        try:
            with tracing.lock_span("row", self._table_name, core.db_system):
                result = await core.run(self._statement, self._params, nowait=self._nowait)
        except LockNotAvailableError:
            metrics.inc("lock_acquisitions", "row", "not_available")
            raise
        except TimeoutError:
            metrics.inc("lock_acquisitions", "row", "timeout")
            raise
        except DatabaseError:
            metrics.inc("lock_acquisitions", "row", "error")
            raise
        rows = result.dicts(limit=2)
        metrics.observe("lock_wait_seconds", time.perf_counter() - started, "row")
        if len(rows) > 1:
            raise MultipleRowsError(
                "RowLock's where clause matched more than one row; they stay locked until "
                "the transaction ends. Identify the row by its primary or a unique key"
            )
        metrics.inc("lock_acquisitions", "row", "acquired" if rows else "none")
        return rows[0] if rows else None


@functools.lru_cache(maxsize=1024)
def _row_lock_sql(
    dialect: Dialect,
    sa_dialect: SADialect,
    table: str,
    where: tuple[str, ...],
    nulls: tuple[bool, ...],
    columns: tuple[str, ...],
    nowait: bool,
    skip_locked: bool,
) -> str:
    """``SELECT ... FOR UPDATE`` as SQL text with ``:w<n>`` parameters, built once."""
    selected = ", ".join(quoted_column(c, sa_dialect) for c in columns) if columns else "*"
    conditions = " AND ".join(
        f"{quoted_column(name, sa_dialect)} IS NULL"
        if is_null
        else f"{quoted_column(name, sa_dialect)} = :w{index}"
        for index, (name, is_null) in enumerate(zip(where, nulls, strict=True))
    )
    clause = dialect.row_lock_clause(nowait=nowait, skip_locked=skip_locked)
    return f"SELECT {selected} FROM {quoted_table(table, sa_dialect)} WHERE {conditions}{clause}"


def _row_lock_construct(
    table: sa.Table,
    where: Mapping[str, Any],
    columns: tuple[str, ...],
    nowait: bool,
    skip_locked: bool,
) -> sa.Select[Any]:
    """The statement for a SQLAlchemy ``Table`` (its column types bind the values)."""
    selectable = table_clause(table, list(dict.fromkeys([*where, *columns])))
    selected = [selectable.c[c] for c in columns] if columns else [sa.literal_column("*")]
    return (
        sa.select(*selected)
        .select_from(selectable)
        .where(*(selectable.c[name] == value for name, value in where.items()))
        .with_for_update(nowait=nowait, skip_locked=skip_locked)
    )
