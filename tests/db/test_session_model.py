"""The session's state machine against a fake driver (tests/db/fakes.py): random blocks
of statements, deferred writes, savepoints, failures the block catches or not,
interrupted statements, and COMMITs that succeed, fail, hang, lose the connection or are
cancelled. Fast: no server, no sleeps.

What must hold after every block: a block that returns normally committed exactly the
writes it made (outside failed savepoints) and its outcome is COMMITTED; a block that
raised committed nothing unless its outcome says otherwise (COMMITTED after a
cancellation during the COMMIT, UNKNOWN when the answer never came); a block that caught
a failure of its own statements never returns normally; the connection is always given
back, with no transaction left open on it.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Sequence
from dataclasses import dataclass, field

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from safesync_async import CommitOutcomeUnknownError, DatabaseError, RollbackOnlyError
from safesync_async.db._core import TransactionCore
from safesync_async.db._state import TransactionOutcome
from safesync_async.db.dialects import dialect_for
from safesync_async.metrics import metrics_for

from .fakes import FakeServer, engine

pytestmark = pytest.mark.model
EXAMPLES = int(os.environ.get("SAFESYNC_MODEL_EXAMPLES", "12")) * 30  # fast: no server
ERRNOS = [1062, 1290, 1213, 2013]  # statement-level, statement-level, whole txn, connection
DOOMING = {1213, 2013}  # a savepoint cannot contain these


@dataclass(frozen=True)
class Op:
    kind: str  # write | defer | defer_fail | flush | fail | timeout | savepoint
    errno: int = 0
    caught: bool = True
    body: tuple[Op, ...] = ()
    savepoint_raises: bool = False


@dataclass
class Run:
    """What the block did, as the test (the model) sees it."""

    expected: list[int] = field(default_factory=list)
    doomed: bool = False  # the block caught a failure the session cannot commit after
    next_row: int = 0

    def row(self) -> int:
        self.next_row += 1
        return self.next_row


class Expected(Exception):
    """Raised by a savepoint block on purpose."""


def _ops(depth: int) -> st.SearchStrategy[Op]:
    simple = st.one_of(
        st.just(Op("write")),
        st.just(Op("defer")),
        st.just(Op("flush")),
        st.builds(Op, kind=st.just("defer_fail"), errno=st.sampled_from(ERRNOS)),
        st.builds(Op, kind=st.just("fail"), errno=st.sampled_from(ERRNOS), caught=st.booleans()),
        st.builds(Op, kind=st.just("timeout"), caught=st.booleans()),
    )
    if depth == 0:
        return simple
    savepoint = st.builds(
        Op,
        kind=st.just("savepoint"),
        body=st.lists(_ops(depth - 1), max_size=4).map(tuple),
        savepoint_raises=st.booleans(),
    )
    return st.one_of(simple, savepoint)


async def _body(core: TransactionCore, ops: Sequence[Op], run: Run, in_savepoint: bool) -> None:
    for op in ops:
        if op.kind == "write":
            row = run.row()
            await core.run(f"INSERT INTO t VALUES ({row})")
            run.expected.append(row)
        elif op.kind == "defer":
            row = run.row()
            core.defer(f"INSERT INTO t VALUES ({row})", None)
            run.expected.append(row)
        elif op.kind == "defer_fail":  # fails where it is sent: the next statement, or exit
            core.defer(f"INSERT INTO t VALUES ({run.row()}) /*fail:{op.errno}*/", None)
        elif op.kind == "flush":
            await core.flush()
        elif op.kind == "fail":
            try:
                await core.run(f"INSERT INTO t VALUES ({run.row()}) /*fail:{op.errno}*/")
            except DatabaseError as exc:  # its own error, or a deferred write's before it
                if not op.caught:
                    raise
                run.doomed = run.doomed or not in_savepoint or exc.errno in DOOMING
        elif op.kind == "timeout":
            try:
                async with asyncio.timeout(0):
                    await core.run(f"INSERT INTO t VALUES ({run.row()}) /*slow*/")
            except TimeoutError:
                if not op.caught:
                    raise
                run.doomed = True
        else:
            await _savepoint(core, op, run)


async def _savepoint(core: TransactionCore, op: Op, run: Run) -> None:
    mark = len(run.expected)
    body_done = False
    try:
        async with core.savepoint():
            await _body(core, op.body, run, in_savepoint=True)
            body_done = True
            if op.savepoint_raises:
                raise Expected
    except Expected:
        del run.expected[mark:]
    except (DatabaseError, TimeoutError) as exc:
        # A failure inside, not caught there, left the savepoint: it was rolled back (or
        # the failure ended the whole transaction); the block catches it and goes on.
        if body_done and op.savepoint_raises:
            raise AssertionError(f"{exc!r} replaced the block's own error") from exc
        del run.expected[mark:]
        run.doomed = run.doomed or _dooming(exc)


def _dooming(exc: BaseException) -> bool:
    """Whether a failure leaving a savepoint makes the whole session rollback-only."""
    if isinstance(exc, DatabaseError):
        return exc.errno in DOOMING
    return isinstance(exc, TimeoutError)


async def _session(
    server: FakeServer, ops: Sequence[Op], body_raises: bool, run: Run
) -> TransactionCore:
    core = TransactionCore(
        engine(),
        dialect_for(engine().dialect),
        setup_sql=(),
        restore_sql=None,
        operation="model",
        cleanup_timeout=0.01,
        metrics=metrics_for(None),
        lease=None,
        connector=server.connector,
    )
    await core.open()
    try:
        await _body(core, ops, run, in_savepoint=False)
        if body_raises:
            raise Expected
    except BaseException as exc:
        await core.close(exc)
        raise
    await core.close(None)
    return core


COMMIT_MODES = ["ok", "ok", "ok", "error", "lost_before", "lost_after", "hang", "gate"]


@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    ops=st.lists(_ops(1), max_size=8),
    body_raises=st.booleans(),
    commit_mode=st.sampled_from(COMMIT_MODES),
)
def test_blocks_commit_everything_or_raise(
    ops: list[Op], body_raises: bool, commit_mode: str
) -> None:
    """Random blocks against the fake driver keep the session's promises (module doc)."""
    asyncio.run(_check(ops, body_raises, commit_mode))


async def _check(ops: list[Op], body_raises: bool, commit_mode: str) -> None:
    server = FakeServer()
    server.commit_mode = commit_mode
    run = Run()
    cores: list[TransactionCore] = []

    async def block() -> None:
        cores.append(await _session(server, ops, body_raises, run))

    task = asyncio.create_task(block())
    if commit_mode == "gate":  # cancelled while the COMMIT is on its way, which completes
        waiting = asyncio.create_task(server.commit_started.wait())
        await asyncio.wait([task, waiting], return_when=asyncio.FIRST_COMPLETED)
        waiting.cancel()
        task.cancel()
        server.gate.set()
    error: BaseException | None = None
    try:
        await task
    except AssertionError:
        raise  # the model's own checks inside the block
    except BaseException as exc:
        error = exc
    connection = server.connections[0]
    assert connection.released
    assert not connection.pending or not connection.is_valid  # nothing left open
    outcome = _outcome(server, error)
    committed = server.committed
    if error is None:
        assert not run.doomed, "a block that caught its own failure returned normally"
        assert outcome is TransactionOutcome.COMMITTED
        assert committed == set(run.expected)
    elif outcome is TransactionOutcome.COMMITTED:
        assert isinstance(error, asyncio.CancelledError)
        assert committed == set(run.expected)
    elif outcome is TransactionOutcome.UNKNOWN:
        unknown = error if not isinstance(error, asyncio.CancelledError) else error.__cause__
        assert isinstance(unknown, CommitOutcomeUnknownError)
        assert committed in (set(), set(run.expected))
    else:
        assert outcome is TransactionOutcome.ROLLED_BACK
        assert committed == set()


def _outcome(server: FakeServer, error: BaseException | None) -> TransactionOutcome:
    """The outcome the session reported (read back through the note on a cancellation
    when the block did not return its core)."""
    if error is None:
        return TransactionOutcome.COMMITTED
    for note in getattr(error, "__notes__", ()):
        for outcome in TransactionOutcome:
            if note.endswith(outcome.name):
                return outcome
    if isinstance(error, CommitOutcomeUnknownError) or isinstance(
        error.__cause__, CommitOutcomeUnknownError
    ):
        return TransactionOutcome.UNKNOWN
    return TransactionOutcome.ROLLED_BACK


@pytest.mark.parametrize("caught", [True, False])
def test_caught_timeout_is_refused_with_the_fake(caught: bool) -> None:
    """The simplest case of the model, spelled out: a block that catches the timeout of
    its slow write is refused at exit, with the interruption as the cause."""

    async def scenario() -> None:
        server = FakeServer()
        ops = [Op("write"), Op("timeout", caught=caught)]
        with pytest.raises(RollbackOnlyError if caught else TimeoutError):
            await _session(server, ops, body_raises=False, run=Run())
        assert server.committed == set()
        assert server.kills == 1

    asyncio.run(scenario())
