"""Pessimistic locks: row locks and named (advisory) locks."""

from __future__ import annotations

from ..lock_names import lock_name
from .advisory_lock import AdvisoryLock
from .row_lock import RowLock

__all__ = ["AdvisoryLock", "RowLock", "lock_name"]
