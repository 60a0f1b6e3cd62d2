"""RowLock: ``SELECT ... FOR UPDATE`` on one row, with NOWAIT / SKIP LOCKED."""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from typing import Any

import sqlalchemy as sa

from ... import tracing
from ...errors import ConfigurationError, DatabaseError, LockNotAvailableError, MultipleRowsError
from ..identifiers import table_clause
from ..session import DbSession

__all__ = ["RowLock"]


class RowLock:
    """Lock one row for the rest of the session's transaction and return it.

    ``await RowLock(session, "orders", {"id": 42}).acquire()`` runs
    ``SELECT * FROM `orders` WHERE `id` = ? FOR UPDATE`` and returns the row as a
    dict, or ``None`` if no row matches. The lock is released by the commit or
    rollback. Names are validated and quoted; values are bound parameters.

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
        wanted = list(columns) if columns is not None else []
        selectable = table_clause(table, list(dict.fromkeys([*where, *wanted])))
        selected = [selectable.c[c] for c in wanted] if wanted else [sa.literal_column("*")]
        self._session = session
        self._table_name = table if isinstance(table, str) else table.name
        self._nowait = nowait
        self._skip_locked = skip_locked
        self._statement = (
            sa.select(*selected)
            .select_from(selectable)
            .where(*(selectable.c[name] == value for name, value in where.items()))
            .with_for_update(nowait=nowait, skip_locked=skip_locked)
        )

    async def acquire(self) -> dict[str, Any] | None:
        """Take the lock; return the row, or ``None`` (no such row, or skipped)."""
        session = self._session
        metrics = session._metrics
        session.dialect.check_row_lock_options(
            session.sa_dialect, nowait=self._nowait, skip_locked=self._skip_locked
        )
        started = time.perf_counter()
        try:
            with tracing.lock_span("row", self._table_name, session.db_system):
                result = await session._execute(self._statement, nowait=self._nowait)
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
