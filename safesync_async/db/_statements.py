"""Statements as the driver sees them: SQL text compiled once per dialect, parameters
bound in the driver's own form, and the check of what may be deferred."""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Dialect as SADialect
from sqlalchemy.sql import Executable
from sqlalchemy.sql.dml import UpdateBase

from ..errors import ConfigurationError, DatabaseError

__all__ = [
    "Params",
    "Statement",
    "check_deferrable",
    "describe",
    "driver_query",
    "executable",
    "text_clause",
]

Statement = str | Executable
Params = Mapping[str, Any] | None

# Statements deferred writes may start with: they change rows, never how the server parses
# what follows (a deferred SET sql_mode=NO_BACKSLASH_ESCAPES would make the parameters of
# later deferred statements, escaped on the client, mean something else on the server).
_DEFERRABLE = frozenset({"INSERT", "UPDATE", "DELETE", "REPLACE", "MERGE", "WITH"})
_DESCRIBED_CHARS = 200


@functools.lru_cache(maxsize=2048)
def text_clause(sql: str) -> sa.TextClause:
    return sa.text(sql)


@functools.lru_cache(maxsize=4096)
def _compiled(sql: str, dialect: SADialect) -> tuple[str, tuple[str, ...] | None]:
    """``:name`` SQL text compiled for the driver: the query string and, for positional
    paramstyles, the parameter names in order (None: the driver takes a dict)."""
    compiled = text_clause(sql).compile(dialect=dialect)
    names = tuple(compiled.positiontup) if compiled.positiontup is not None else None
    return compiled.string, names


def driver_query(
    sql: str, params: Params, dialect: SADialect
) -> tuple[str, Sequence[Any] | dict[str, Any]]:
    """SQL text and parameters in the driver's own form."""
    query, names = _compiled(sql, dialect)
    if names is None:
        return query, dict(params or {})
    if not names:
        return query, ()
    try:
        return query, tuple([params[name] for name in names])  # type: ignore[index]
    except (KeyError, TypeError) as exc:
        raise DatabaseError(f"missing value for a bind parameter of {sql!r}: {exc!r}") from None


def executable(statement: Statement) -> Executable:
    """SQL text as a SQLAlchemy ``text()`` construct; constructs as they are."""
    if isinstance(statement, str):
        return text_clause(statement)
    if isinstance(statement, Executable):
        return statement
    raise TypeError(f"expected SQL text or a SQLAlchemy executable, not {type(statement).__name__}")


def describe(statement: Statement) -> str:
    """A short rendering of a statement for messages."""
    text = statement if isinstance(statement, str) else str(statement)
    text = " ".join(text.split())
    return text if len(text) <= _DESCRIBED_CHARS else text[: _DESCRIBED_CHARS - 3] + "..."


def check_deferrable(statement: Statement, *, hash_comments: bool) -> None:
    """Raise ConfigurationError unless ``statement`` is exactly one data-changing statement
    (INSERT, UPDATE, DELETE, REPLACE, MERGE, or one starting with WITH).

    SQL text is scanned for its first keyword and for a second statement: a ``;`` outside
    quotes and comments, MySQL's executable comments (``/*! ... */``), or a backslash in a
    string literal (whose meaning depends on the server's SQL mode) are all refused: bind
    values as parameters instead. ``hash_comments``: ``#`` starts a comment (MySQL).
    """
    if isinstance(statement, str):
        problem = _scan_problem(statement, hash_comments=hash_comments)
    elif isinstance(statement, sa.TextClause):
        problem = _scan_problem(statement.text, hash_comments=hash_comments)
    elif isinstance(statement, UpdateBase):
        problem = None
    elif isinstance(statement, Executable):
        problem = f"{type(statement).__name__} constructs are not writes"
    else:
        raise TypeError(
            f"expected SQL text or a SQLAlchemy executable, not {type(statement).__name__}"
        )
    if problem is not None:
        raise ConfigurationError(
            f"defer() takes one INSERT, UPDATE, DELETE, REPLACE or MERGE statement: {problem} "
            f"in {describe(statement)!r}; run other statements with execute()"
        )


@functools.lru_cache(maxsize=2048)
def _scan_problem(sql: str, *, hash_comments: bool) -> str | None:
    """Why ``sql`` is not one deferrable statement, or None (scanned once per text)."""
    first: str | None = None
    index, length = 0, len(sql)
    trailing = False  # a top-level ';' was seen: only whitespace and comments may follow
    while index < length:
        char = sql[index]
        if char.isspace():
            index += 1
        elif sql.startswith("/*", index):
            if sql.startswith(("/*!", "/*M!"), index):
                return "an executable comment (/*! ... */)"
            end = sql.find("*/", index + 2)
            if end < 0:
                return "an unterminated comment"
            index = end + 2
        elif _line_comment_at(sql, index, hash_comments=hash_comments):
            index = _line_end(sql, index)
        elif trailing:
            return "more than one statement"
        elif char == ";":
            trailing = True
            index += 1
        elif char in "'\"`":
            end, problem = _quoted_end(sql, index)
            if problem is not None:
                return problem
            index = end
        else:
            if first is None:
                word_end = index
                while word_end < length and (sql[word_end].isalnum() or sql[word_end] == "_"):
                    word_end += 1
                first = sql[index:word_end].upper() or char
                if first not in _DEFERRABLE:
                    return f"it starts with {first!r}"
                index = max(word_end, index + 1)
            else:
                index += 1
    if first is None:
        return "there is no statement"
    return None


def _line_comment_at(sql: str, index: int, *, hash_comments: bool) -> bool:
    """A line comment starts here: ``#`` (MySQL), or ``--`` followed by a space, a control
    character or the end, as MySQL requires (``a--1`` is arithmetic there). PostgreSQL
    also takes ``--1`` as a comment: scanning it as code can only refuse more, never less."""
    if sql[index] == "#":
        return hash_comments
    if not sql.startswith("--", index):
        return False
    after = index + 2
    return after >= len(sql) or sql[after] <= " "


def _line_end(sql: str, index: int) -> int:
    end = sql.find("\n", index)
    return len(sql) if end < 0 else end + 1


def _quoted_end(sql: str, start: int) -> tuple[int, str | None]:
    """Index after the quoted item opening at ``start`` (doubled quotes escape the quote)."""
    quote = sql[start]
    index = start + 1
    while index < len(sql):
        char = sql[index]
        if char == "\\" and quote != "`":
            return index, "a backslash in a string literal"
        if char == quote:
            if index + 1 < len(sql) and sql[index + 1] == quote:
                index += 2
                continue
            return index + 1, None
        index += 1
    return index, "an unterminated quoted string"
