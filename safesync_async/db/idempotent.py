"""Idempotent INSERT: a duplicate key means "already done", never an error."""

from __future__ import annotations

from ..errors import DuplicateKeyError
from .dialects import ErrorKind
from .session import DbSession, Params, Statement

__all__ = ["insert_idempotent"]


async def insert_idempotent(
    session: DbSession, sql: Statement, params: Params = None, *, key: str | None = None
) -> bool:
    """Run an INSERT; return True if it inserted, False if the row already existed.

    A duplicate is recognised by the server's error code (1062 on MySQL, 23505 on
    PostgreSQL), never by message text, and the session stays usable.
    ``INSERT IGNORE`` is deliberately not used: it also silences truncation and
    NULL-to-default coercion. Pass ``key`` (the unique index or constraint name:
    ``"PRIMARY"`` for MySQL's primary key, ``"<table>_pkey"`` for PostgreSQL's,
    ``"uq_orders_ref"`` for a named one) to accept duplicates on that key only; a
    collision on any other unique key then raises :class:`DuplicateKeyError`.
    On PostgreSQL the INSERT runs in a savepoint, since an error aborts the transaction.
    """
    core = session.core
    try:
        if core.dialect.keeps_transaction_usable(ErrorKind.DUPLICATE_KEY):
            await core.run(sql, params, tolerate=ErrorKind.DUPLICATE_KEY)
        else:
            async with core.savepoint():
                await core.run(sql, params)
    except DuplicateKeyError as exc:
        if key is not None and exc.constraint is not None and exc.constraint != key:
            core.fail(exc)
            raise
        return False
    return True
