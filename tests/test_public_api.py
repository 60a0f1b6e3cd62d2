"""The public surface: __all__ is exactly what is exported, sorted, and seed-style module
paths import the same objects."""

from __future__ import annotations

import inspect

import safesync_async
from safesync_async import errors


def test_all_is_sorted_and_complete() -> None:
    """__all__ is sorted (constants, classes, functions: isort style), every name resolves,
    and no public name is left out of it."""
    exported = safesync_async.__all__

    def isort_key(name: str) -> tuple[int, str]:
        return (0 if name.isupper() else 1 if name[0].isupper() else 2, name)

    assert exported == sorted(exported, key=isort_key)
    public = {
        name
        for name, value in vars(safesync_async).items()
        if not name.startswith("_") and not inspect.ismodule(value) and name != "annotations"
    }
    assert public == set(exported)


def test_every_error_derives_from_the_root() -> None:
    """Every exception class in errors.py derives from SafeSyncError and is exported."""
    for name in errors.__all__:
        cls = getattr(errors, name)
        assert issubclass(cls, errors.SafeSyncError)
        assert name in safesync_async.__all__


def test_timeouts_are_builtin_timeouts() -> None:
    """Every 'ran out of time' error can be caught as the builtin TimeoutError."""
    for cls in (errors.LockTimeoutError, errors.LockWaitTimeoutError, errors.StatementTimeoutError):
        assert issubclass(cls, TimeoutError)


def test_seed_module_paths() -> None:
    """Imports written for the synchronous seed library work after renaming the package."""
    from safesync_async.db.helpers import insert_idempotent, occ_update
    from safesync_async.db.locking.advisory_lock import AdvisoryLock
    from safesync_async.db.locking.row_lock import RowLock
    from safesync_async.db.session import DbSession
    from safesync_async.errors import LockTimeoutError

    assert (DbSession, RowLock, AdvisoryLock) == (
        safesync_async.DbSession,
        safesync_async.RowLock,
        safesync_async.AdvisoryLock,
    )
    assert (occ_update, insert_idempotent, LockTimeoutError) == (
        safesync_async.occ_update,
        safesync_async.insert_idempotent,
        safesync_async.LockTimeoutError,
    )
