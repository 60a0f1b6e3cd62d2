"""What a transaction has gone through: the bookkeeping that decides whether a block that
ended without an exception may be committed."""

from __future__ import annotations

import enum

from ..errors import DatabaseError, DatabaseUnavailableError, RollbackOnlyError
from ._statements import Statement, describe

__all__ = ["TransactionOutcome", "TransactionState"]


class TransactionOutcome(enum.Enum):
    """How a :class:`~safesync_async.DbSession`'s transaction ended (``session.outcome``),
    known even when the task was cancelled meanwhile."""

    OPEN = "open"  #: not ended yet
    COMMITTED = "committed"  #: the server confirmed the COMMIT
    ROLLED_BACK = "rolled_back"  #: rolled back or never committed: nothing persisted
    UNKNOWN = "unknown"  #: COMMIT sent and no answer: it may or may not have persisted


class TransactionState:
    """Failures, interruptions and lost connections seen by one transaction.

    Any of them makes the transaction rollback-only: a block that then ends without an
    exception gets :meth:`refusal` raised at its exit instead of a commit.
    """

    __slots__ = (
        "broken",
        "failure",
        "interrupted_statement",
        "interruption",
        "named_locks",
        "outcome",
        "server_unreachable",
        "transaction_lost",
    )

    def __init__(self) -> None:
        #: The first statement error outside a savepoint (or tolerated kinds).
        self.failure: DatabaseError | None = None
        #: The cancellation or timeout that interrupted a statement mid-flight.
        self.interruption: BaseException | None = None
        self.interrupted_statement = ""
        #: The connection was lost: nothing more can be sent on it.
        self.broken = False
        #: The server ended the whole transaction (a savepoint cannot contain it).
        self.transaction_lost = False
        #: A named lock that outlives the transaction may be held on the connection.
        self.named_locks = False
        #: Cleaning up after an interruption, the server could not be reached at all.
        self.server_unreachable = False
        self.outcome = TransactionOutcome.OPEN

    @property
    def rollback_only(self) -> bool:
        return self.failure is not None or self.interruption is not None or self.broken

    def fail(self, error: DatabaseError) -> None:
        """Make the transaction rollback-only because of ``error`` (the first one is kept)."""
        if self.failure is None:
            self.failure = error

    def interrupt(self, exc: BaseException, statement: Statement) -> None:
        """A statement was interrupted: its connection can no longer be trusted."""
        if self.interruption is None:
            self.interruption = exc
            self.interrupted_statement = f"{type(exc).__name__} during {describe(statement)!r}"

    def refusal(self, *, connection_valid: bool) -> RollbackOnlyError | None:
        """Why a block that ended without an exception cannot be committed, or None."""
        cause: BaseException
        if self.failure is not None:
            cause = self.failure
            message = f"the session is rollback-only after an earlier error ({self.failure})"
        elif self.interruption is not None:
            cause = self.interruption
            message = (
                f"a statement was interrupted ({self.interrupted_statement}) and the "
                "connection discarded with the transaction"
            )
        elif self.broken or not connection_valid:
            cause = DatabaseUnavailableError("the connection was invalidated")
            message = "the session's connection was lost or invalidated"
        else:
            return None
        refusal = RollbackOnlyError(
            f"commit refused: {message}; nothing was committed. Run the unit of work again "
            "in a new DbSession",
            errno=getattr(cause, "errno", None),
            sqlstate=getattr(cause, "sqlstate", None),
        )
        refusal.__cause__ = cause
        return refusal
