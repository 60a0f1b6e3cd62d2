"""Every example under examples/ runs to completion against the real servers (their own
assertions check the outcome they print)."""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Awaitable, Callable
from typing import cast

import pytest

import examples

EXAMPLES = sorted(
    info.name
    for info in pkgutil.iter_modules(examples.__path__)
    if info.name not in {"settings"} and not info.name.startswith("_")
)


def test_examples_are_discovered() -> None:
    """The five database twins of the seed README are present."""
    assert {
        "db_atomic_update",
        "db_row_lock",
        "db_occ",
        "db_advisory_lock",
        "db_idempotent_insert",
    } <= set(EXAMPLES)


@pytest.mark.parametrize("name", EXAMPLES)
async def test_example_runs(name: str) -> None:
    """The example's main() completes and its own checks pass."""
    module = importlib.import_module(f"examples.{name}")
    main = cast(Callable[[], Awaitable[None]], module.main)
    await main()
