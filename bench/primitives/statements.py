"""The SQL of the transfers, written once with ``:name`` parameters.

The library and the seed run these texts (or generate the same statements themselves:
``RowLock`` the ``SELECT * ... FOR UPDATE``, ``occ_update`` the versioned UPDATE); the
raw loops run them converted to their driver's paramstyle by :func:`positional`.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from typing import Literal

#: GET_LOCK's server-side wait bound in seconds, the library's AdvisoryLock default.
ADVISORY_TIMEOUT = 10
GET_LOCK = "SELECT GET_LOCK(:name, :timeout)"
RELEASE_ALL_LOCKS = "SELECT RELEASE_ALL_LOCKS()"
ADVISORY_XACT_LOCK = "SELECT pg_advisory_xact_lock(:key)"

_PARAMETER = re.compile(r"(?<![:\w]):([A-Za-z_]\w*)")


@dataclass(frozen=True, slots=True)
class TransferSql:
    """The statements of the four strategies on one accounts table."""

    add: str  # atomic: both accounts by a relative UPDATE
    lock: str  # RowLock: the row, locked
    read: str  # OCC and AdvisoryLock: the row, plain read
    write: str  # RowLock and AdvisoryLock: the computed balance
    occ_write: str  # OCC: the computed balance, if the version is unchanged

    @classmethod
    def for_table(cls, table: str) -> TransferSql:
        return cls(
            add=f"UPDATE {table} SET balance = balance + :delta, transfers = transfers + 1 "
            "WHERE id = :id",
            lock=f"SELECT * FROM {table} WHERE id = :id FOR UPDATE",
            read=f"SELECT * FROM {table} WHERE id = :id",
            write=f"UPDATE {table} SET balance = :balance, transfers = transfers + 1 "
            "WHERE id = :id",
            occ_write=f"UPDATE {table} SET balance = :balance, transfers = :transfers, "
            "version = version + 1 WHERE id = :id AND version = :version",
        )


def positional(sql: str, style: Literal["format", "numeric"]) -> tuple[str, tuple[str, ...]]:
    """``sql`` with its ``:name`` parameters replaced by ``%s`` (asyncmy) or ``$1``, ``$2``
    ... (asyncpg), and the parameter names in the order the driver wants their values."""
    names: list[str] = []

    def replace(match: re.Match[str]) -> str:
        names.append(match.group(1))
        return "%s" if style == "format" else f"${len(names)}"

    return _PARAMETER.sub(replace, sql), tuple(names)


def advisory_key(table: str, account: int) -> str:
    """The advisory lock key of an account (the library hashes it into a lock name; the raw
    MariaDB loop and the seed use it as the name)."""
    return f"{table}:{account}"


def advisory_key64(key: str) -> int:
    """A signed 64-bit PostgreSQL advisory lock key for ``key`` (raw asyncpg loop)."""
    return int.from_bytes(hashlib.sha256(key.encode()).digest()[:8], "big", signed=True)
