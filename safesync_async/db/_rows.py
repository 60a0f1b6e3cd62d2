"""Rows: the buffered outcome of one statement, whichever path executed it."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy.engine import CursorResult

__all__ = ["Rows"]


class Rows:
    """Row count, column names and rows of one executed statement (all read already)."""

    __slots__ = ("inserted_key", "keys", "rowcount", "rows")

    def __init__(
        self,
        rowcount: int,
        keys: Sequence[str],
        rows: Sequence[Sequence[Any]],
        inserted_key: tuple[Any, ...] | None = None,
    ) -> None:
        self.rowcount = rowcount
        self.keys = keys
        self.rows = rows
        self.inserted_key = inserted_key

    @classmethod
    def from_result(cls, result: CursorResult[Any]) -> Rows:
        """Read a SQLAlchemy result completely."""
        keys: Sequence[str] = tuple(result.keys()) if result.returns_rows else ()
        rows = result.all() if result.returns_rows else ()
        inserted = None
        if result.context.isinsert and not result.context.executemany:
            inserted = tuple(result.inserted_primary_key or ())
        rowcount = result.rowcount
        result.close()
        return cls(rowcount, keys, rows, inserted)

    def dicts(self, limit: int | None = None) -> list[dict[str, Any]]:
        keys = self.keys
        rows = self.rows if limit is None else self.rows[:limit]
        return [dict(zip(keys, row, strict=False)) for row in rows]

    def scalar(self) -> Any:
        """First column of the first row, or None."""
        return self.rows[0][0] if self.rows else None
