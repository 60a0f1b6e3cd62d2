"""Section 2a: the database primitives against a raw-driver loop and the seed library.

Transfers between accounts with four strategies (atomic UPDATE, RowLock, occ_update,
AdvisoryLock) on two shapes (1,000 accounts, 5 hot ones), each implementation in its own
worker process: ``section`` runs and verifies them, ``summary`` and ``report`` turn the
runs into medians, ratios and tables; ``library``, ``raw_mariadb``, ``raw_postgres`` and
``seed`` are the implementations, ``worker`` and ``harness`` run them.
"""

from __future__ import annotations

from .section import primitives_section

__all__ = ["primitives_section"]
