"""Seed-compatible import path: ``from safesync_async.db.helpers import occ_update``."""

from __future__ import annotations

from .idempotent import insert_idempotent
from .occ import occ_update

__all__ = ["insert_idempotent", "occ_update"]
