"""MySQL 8.0+ and MariaDB 10.6+ (asyncmy or any DB-API driver with MySQL errnos)."""

from __future__ import annotations

import math
import re

from sqlalchemy.engine import Dialect as SADialect

from ...errors import ConfigurationError
from ..lock_names import LockKey
from .base import AdvisoryLockSql, ClassifiedError, Dialect, ErrorKind

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
    # Outages: the server cannot take this now, whatever the statement (docs/errors.md).
    1836: ErrorKind.UNAVAILABLE,  # ER_READ_ONLY_MODE (InnoDB read-only)
    1792: ErrorKind.UNAVAILABLE,  # ER_CANT_EXECUTE_IN_READ_ONLY_TRANSACTION
    1040: ErrorKind.UNAVAILABLE,  # ER_CON_COUNT_ERROR: too many connections
    1203: ErrorKind.UNAVAILABLE,  # ER_TOO_MANY_USER_CONNECTIONS
    1226: ErrorKind.UNAVAILABLE,  # ER_USER_LIMIT_REACHED (max_questions, ...)
    1053: ErrorKind.DISCONNECT,  # ER_SERVER_SHUTDOWN
    1927: ErrorKind.DISCONNECT,  # ER_CONNECTION_KILLED (MariaDB)
    3169: ErrorKind.DISCONNECT,  # ER_SESSION_WAS_KILLED (MySQL 8)
    4031: ErrorKind.DISCONNECT,  # ER_CLIENT_INTERACTION_TIMEOUT (MySQL 8)
    1043: ErrorKind.DISCONNECT,  # ER_HANDSHAKE_ERROR
    1158: ErrorKind.DISCONNECT,  # ER_NET_READ_ERROR
    1159: ErrorKind.DISCONNECT,  # ER_NET_READ_INTERRUPTED
    1160: ErrorKind.DISCONNECT,  # ER_NET_ERROR_ON_WRITE
    1161: ErrorKind.DISCONNECT,  # ER_NET_WRITE_INTERRUPTED
    2002: ErrorKind.DISCONNECT,  # CR_CONNECTION_ERROR
    2003: ErrorKind.DISCONNECT,  # CR_CONN_HOST_ERROR
    2006: ErrorKind.DISCONNECT,  # CR_SERVER_GONE_ERROR
    2013: ErrorKind.DISCONNECT,  # CR_SERVER_LOST
    2055: ErrorKind.DISCONNECT,  # CR_SERVER_LOST_EXTENDED
    0: ErrorKind.DISCONNECT,  # client-side InterfaceError(0): the connection is closed
}

# Codes shared by an outage and by ordinary failures, told apart by the server's wording:
# 1290 is also "--secure-file-priv" or "--skip-grant-tables"; 1047 also an unknown command.
_UNAVAILABLE_IF_MENTIONED: dict[int, tuple[str, ...]] = {
    1290: ("read-only", "read_only"),  # ER_OPTION_PREVENTS_STATEMENT: (super-)read-only
    1047: ("wsrep",),  # ER_UNKNOWN_COM_ERROR: a Galera node not ready
}
# What to check when connecting failed.
_CONNECT_HINTS: dict[int, str] = {
    1045: "check the user name and password in the URL",
    1044: "the user may not use this database: check the grants or the database name",
    1049: "the database does not exist: create it or fix the name in the URL",
    2005: "the host name does not resolve: check the URL",
    1040: "the server has no connection left (max_connections)",
    1203: "the user has no connection left (max_user_connections)",
}

_TRANSACTION_ENDING = frozenset({ErrorKind.DEADLOCK, ErrorKind.SERIALIZATION, ErrorKind.DISCONNECT})
_STATEMENT_ONLY = frozenset(
    {ErrorKind.DUPLICATE_KEY, ErrorKind.LOCK_NOT_AVAILABLE, ErrorKind.LOCK_WAIT_TIMEOUT}
)
# The key name is context for the caller, not the classification (that is the errno).
_DUPLICATE_KEY_NAME = re.compile(r"for key '(?:[^']*\.)?([^'.]*)'")
_MAX_LOCK_WAIT_TIMEOUT = 1_073_741_824


class MySQLDialect(Dialect):
    """MySQL and MariaDB: one table of errnos, server-version checks for the differences."""

    label = "MySQL"
    connect_timeout_argument = "connect_timeout"
    hash_comments = True

    def classify(self, driver_error: BaseException, *, nowait: bool = False) -> ClassifiedError:
        errno, message = _errno_and_message(driver_error)
        kind = _ERRNO_KINDS.get(errno, ErrorKind.OTHER) if errno is not None else ErrorKind.OTHER
        if errno in _UNAVAILABLE_IF_MENTIONED:
            lowered = message.lower()
            if any(word in lowered for word in _UNAVAILABLE_IF_MENTIONED[errno]):
                kind = ErrorKind.UNAVAILABLE
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

    def advisory_lock_sql(self, key: LockKey, name: str, wait: float) -> AdvisoryLockSql:
        # GET_LOCK waits on the server itself; the lock belongs to the connection.
        return AdvisoryLockSql(
            statement="SELECT GET_LOCK(:name, :timeout)",
            params={"name": name, "timeout": wait},
            answers=True,
            outlives_transaction=True,
        )

    def release_advisory_locks_sql(self) -> str | None:
        return "SELECT RELEASE_ALL_LOCKS()"

    def kill_session_sql(self, session_id: int) -> str:
        return f"KILL CONNECTION {int(session_id)}"

    def is_unknown_session(self, info: ClassifiedError) -> bool:
        return info.errno == 1094  # ER_NO_SUCH_THREAD

    def connect_hint(self, info: ClassifiedError) -> str:
        found = _CONNECT_HINTS.get(info.errno) if info.errno is not None else None
        return found if found is not None else super().connect_hint(info)


def _errno_and_message(driver_error: BaseException) -> tuple[int | None, str]:
    args = driver_error.args
    if len(args) >= 2 and isinstance(args[0], int):
        return args[0], str(args[1])
    return None, str(driver_error)
