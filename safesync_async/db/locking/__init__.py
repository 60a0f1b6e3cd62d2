"""Pessimistic locks: row locks and named (advisory) locks."""

from __future__ import annotations

from .advisory_lock import AdvisoryLock
from .names import lock_name
from .row_lock import RowLock

__all__ = ["AdvisoryLock", "RowLock", "lock_name"]
