"""MySQL 8.0+ and MariaDB 10.6+ (asyncmy or any DB-API driver with MySQL errnos)."""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from sqlalchemy.engine import Dialect as SADialect

from ...errors import ConfigurationError
from ..lock_names import LockKey
from ..rows import Rows
from .base import AdvisoryOutcome, ClassifiedError, Dialect, DirectExecutor, ErrorKind

if TYPE_CHECKING:
    from ..session import DbSession

# Server error numbers, one table (see docs/sessions.md for what each means to callers).
_ERRNO_KINDS: dict[int, ErrorKind] = {
    1213: ErrorKind.DEADLOCK,  # ER_LOCK_DEADLOCK: whole transaction rolled back
    3058: ErrorKind.DEADLOCK,  # ER_USER_LOCK_DEADLOCK (MySQL named locks)
    1205: ErrorKind.LOCK_WAIT_TIMEOUT,  # ER_LOCK_WAIT_TIMEOUT: statement rolled back
    1020: ErrorKind.SERIALIZATION,  # ER_CHECKREAD: MariaDB innodb_snapshot_isolation
    3572: ErrorKind.LOCK_NOT_AVAILABLE,  # ER_LOCK_NOWAIT (MySQL)
    1062: ErrorKind.DUPLICATE_KEY,  # ER_DUP_ENTRY
    1022: ErrorKind.DUPLICATE_KEY,  # ER_DUP_KEY
    1586: ErrorKind.DUPLICATE_KEY,  # ER_DUP_ENTRY_WITH_KEY_NAME
    1969: ErrorKind.STATEMENT_TIMEOUT,  # ER_STATEMENT_TIMEOUT (MariaDB max_statement_time)
    3024: ErrorKind.STATEMENT_TIMEOUT,  # ER_QUERY_TIMEOUT (MySQL max_execution_time)
    1053: ErrorKind.DISCONNECT,  # ER_SERVER_SHUTDOWN
    1927: ErrorKind.DISCONNECT,  # ER_CONNECTION_KILLED (MariaDB)
    4031: ErrorKind.DISCONNECT,  # ER_CLIENT_INTERACTION_TIMEOUT (MySQL 8)
    2002: ErrorKind.DISCONNECT,  # CR_CONNECTION_ERROR
    2003: ErrorKind.DISCONNECT,  # CR_CONN_HOST_ERROR
    2006: ErrorKind.DISCONNECT,  # CR_SERVER_GONE_ERROR
    2013: ErrorKind.DISCONNECT,  # CR_SERVER_LOST
    2055: ErrorKind.DISCONNECT,  # CR_SERVER_LOST_EXTENDED
    0: ErrorKind.DISCONNECT,  # client-side InterfaceError(0): the connection is closed
}

_TRANSACTION_ENDING = frozenset({ErrorKind.DEADLOCK, ErrorKind.SERIALIZATION, ErrorKind.DISCONNECT})
_STATEMENT_ONLY = frozenset(
    {ErrorKind.DUPLICATE_KEY, ErrorKind.LOCK_NOT_AVAILABLE, ErrorKind.LOCK_WAIT_TIMEOUT}
)
# The key name is context for the caller, not the classification (that is the errno).
_DUPLICATE_KEY_NAME = re.compile(r"for key '(?:[^']*\.)?([^'.]*)'")
_ISOLATION_LEVELS = frozenset(
    {"READ UNCOMMITTED", "READ COMMITTED", "REPEATABLE READ", "SERIALIZABLE"}
)
_MAX_LOCK_WAIT_TIMEOUT = 1_073_741_824


class MySQLDialect(Dialect):
    """MySQL and MariaDB: one table of errnos, server-version checks for the differences."""

    label = "MySQL"
    connect_timeout_argument = "connect_timeout"

    def classify(self, driver_error: BaseException, *, nowait: bool = False) -> ClassifiedError:
        errno, message = _errno_and_message(driver_error)
        kind = _ERRNO_KINDS.get(errno, ErrorKind.OTHER) if errno is not None else ErrorKind.OTHER
        if nowait and kind is ErrorKind.LOCK_WAIT_TIMEOUT:
            kind = ErrorKind.LOCK_NOT_AVAILABLE  # MariaDB reports NOWAIT failures as 1205
        constraint = None
        if kind is ErrorKind.DUPLICATE_KEY:
            found = _DUPLICATE_KEY_NAME.search(message)
            constraint = found.group(1) if found else None
        return ClassifiedError(kind, errno, None, message, constraint)

    def aborts_transaction(self, kind: ErrorKind) -> bool:
        return kind in _TRANSACTION_ENDING

    def keeps_transaction_usable(self, kind: ErrorKind) -> bool:
        return kind in _STATEMENT_ONLY

    def isolation_level_sql(self, level: str) -> str:
        normalized = level.replace("_", " ").upper()
        if normalized not in _ISOLATION_LEVELS:
            raise ConfigurationError(
                f"unknown isolation level {level!r}; use one of {sorted(_ISOLATION_LEVELS)}"
            )
        return f"SET TRANSACTION ISOLATION LEVEL {normalized}"

    def lock_timeout_sql(self, seconds: float) -> tuple[str, str | None]:
        # innodb_lock_wait_timeout is whole seconds, 1 at least on MySQL.
        whole = min(max(1, math.ceil(seconds)), _MAX_LOCK_WAIT_TIMEOUT)
        return (
            "SET @safesync_saved_lock_wait_timeout = @@SESSION.innodb_lock_wait_timeout, "
            f"SESSION innodb_lock_wait_timeout = {whole}",
            "SET SESSION innodb_lock_wait_timeout = @safesync_saved_lock_wait_timeout",
        )

    def check_row_lock_options(
        self, sa_dialect: SADialect, *, nowait: bool, skip_locked: bool
    ) -> None:
        if not (nowait or skip_locked):
            return
        version = tuple(sa_dialect.server_version_info or ())
        needed: tuple[int, ...]
        if getattr(sa_dialect, "is_mariadb", False):
            server, needed = "MariaDB", (10, 6) if skip_locked else (10, 3)
        else:
            server, needed = "MySQL", (8, 0, 1)
        if version < needed:
            option = "SKIP LOCKED" if skip_locked else "NOWAIT"
            shown = ".".join(map(str, version)) or "unknown"
            wanted = ".".join(map(str, needed))
            raise ConfigurationError(
                f"{option} needs {server} {wanted} or newer; this server is {shown}"
            )

    async def acquire_advisory_lock(
        self, session: DbSession, key: LockKey, name: str, wait: float
    ) -> AdvisoryOutcome:
        # Noted before the call: if the wait is interrupted the server may still grant it.
        session._note_named_lock()
        rows = await session._execute(
            "SELECT GET_LOCK(:name, :timeout)", {"name": name, "timeout": wait}
        )
        granted = rows.scalar()
        if granted == 1:
            return AdvisoryOutcome.ACQUIRED
        return AdvisoryOutcome.TIMEOUT if granted == 0 else AdvisoryOutcome.FAILED

    def release_advisory_locks_sql(self) -> str | None:
        return "SELECT RELEASE_ALL_LOCKS()"

    def server_session_id(self, driver_connection: object) -> int | None:
        thread_id = getattr(driver_connection, "thread_id", None)
        if not callable(thread_id):
            return None
        value = thread_id()
        return value if isinstance(value, int) else None

    def kill_session_sql(self, session_id: int) -> str:
        return f"KILL CONNECTION {int(session_id)}"

    def is_unknown_session(self, info: ClassifiedError) -> bool:
        return info.errno == 1094  # ER_NO_SUCH_THREAD

    def direct_executor(self, driver_connection: object) -> DirectExecutor | None:
        if type(driver_connection).__module__.startswith("asyncmy"):
            return AsyncmyExecutor(driver_connection)
        return None


_SERVER_STATUS_IN_TRANS = 1
_CLIENT_MULTI_STATEMENTS = 1 << 16
# Rendered statements are separated by a line of their own, so that a statement ending
# in a "-- comment" cannot swallow the separator.
_STATEMENT_SEPARATOR = "\n;\n"


class AsyncmyExecutor:
    """Statements on a native asyncmy connection (one buffered cursor, format paramstyle)."""

    __slots__ = ("_connection", "_cursor", "_multi_statements")

    def __init__(self, connection: Any) -> None:
        self._connection = connection
        self._cursor = connection.cursor()
        flags = getattr(connection, "_client_flag", 0)
        self._multi_statements = isinstance(flags, int) and bool(flags & _CLIENT_MULTI_STATEMENTS)

    async def execute(self, query: str, args: Sequence[Any] | dict[str, Any]) -> Rows:
        cursor = self._cursor
        await cursor.execute(query, args)
        description = cursor.description
        if not description:
            return Rows(cursor.rowcount, (), (), (cursor.lastrowid,) if cursor.lastrowid else None)
        rows = await cursor.fetchall()
        return Rows(cursor.rowcount, tuple(column[0] for column in description), rows)

    def render(self, query: str, args: Sequence[Any] | dict[str, Any]) -> str | None:
        if not self._multi_statements:
            return None
        rendered: str = self._cursor.mogrify(query, args)
        return rendered.rstrip().rstrip(";")

    async def execute_rendered(
        self, statements: Sequence[str], counts: list[int], *, then_commit: bool = False
    ) -> None:
        cursor = self._cursor
        script = [*statements, "COMMIT"] if then_commit else statements
        await cursor.execute(_STATEMENT_SEPARATOR.join(script))
        counts.append(cursor.rowcount)
        while await cursor.nextset():
            counts.append(cursor.rowcount)
        if then_commit:
            counts.pop()  # the COMMIT's

    async def commit(self) -> None:
        await self._connection.commit()

    async def rollback(self) -> None:
        await self._connection.rollback()

    def in_transaction(self) -> bool | None:
        status = getattr(self._connection, "server_status", None)
        return bool(status & _SERVER_STATUS_IN_TRANS) if isinstance(status, int) else None


def _errno_and_message(driver_error: BaseException) -> tuple[int | None, str]:
    args = driver_error.args
    if len(args) >= 2 and isinstance(args[0], int):
        return args[0], str(args[1])
    return None, str(driver_error)
