"""Medians over the verified runs of each cell, the ratios between implementations, and
the targets they are held to."""

from __future__ import annotations

from typing import Any

from ..settings import PRIMITIVE_WORKERS
from ..stats import median, ratio
from .workload import SHAPE_LABELS, SHAPES, STRATEGIES

BACKEND_LABELS = {"mariadb": "MariaDB/MySQL", "postgresql": "PostgreSQL"}
IMPLEMENTATION_LABELS = {
    "mariadb": {
        "seed": "seed (32 threads)",
        "raw": "raw asyncmy loop",
        "safesync": "safesync_async",
    },
    "postgresql": {"raw": "raw asyncpg loop", "safesync": "safesync_async"},
}
#: safesync_async's throughput at least this x the raw loop's: every cell, every database.
TARGET_VS_RAW = 0.8
#: safesync_async's throughput at least this x the seed's: these shapes (MariaDB).
TARGET_VS_SEED = 2.0
TARGET_VS_SEED_SHAPES = ("cold",)
#: safesync_async's client CPU per transfer at most this x the raw loop's: these strategies.
TARGET_CPU_VS_RAW = 1.3
TARGET_CPU_STRATEGIES = ("row_lock", "occ")


def _implementation_summary(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Median and range over the verified runs of one implementation in one cell."""
    good = [r for r in runs if r["ok"]]

    def middle(name: str) -> float | None:
        return median([r[name] for r in good if r[name] is not None])

    rates = [r["transfers_per_s"] for r in good if r["transfers_per_s"]]
    reasons = sorted({reason for r in good for reason in r["retries"]})
    return {
        "runs": len(runs),
        "ok_runs": len(good),
        "disturbed_runs": sum(r["disturbed"] for r in good),
        "median_transfers_per_s": median(rates),
        "min_transfers_per_s": min(rates, default=None),
        "max_transfers_per_s": max(rates, default=None),
        "median_client_us_per_op": middle("client_us_per_op"),
        "median_server_us_per_op": middle("server_us_per_op"),
        "median_p50_ms": middle("p50_ms"),
        "median_p99_ms": middle("p99_ms"),
        "median_retries": {
            reason: median([r["retries"].get(reason, 0) for r in good]) for reason in reasons
        },
    }


def _cell(backend: str, shape: str, strategy: str, runs: list[dict[str, Any]]) -> dict[str, Any]:
    """One line of the comparison: every implementation, and safesync_async's ratios."""
    implementations = {
        name: _implementation_summary([r for r in runs if r["implementation"] == name])
        for name in IMPLEMENTATION_LABELS[backend]
    }
    ours = implementations["safesync"]
    raw = implementations["raw"]
    seed = implementations.get("seed")
    return {
        "backend": backend,
        "shape": shape,
        "strategy": strategy,
        "label": f"{SHAPE_LABELS[shape]} · {STRATEGIES[strategy]}",
        "implementations": implementations,
        "vs_raw": ratio(ours["median_transfers_per_s"], raw["median_transfers_per_s"]),
        "vs_seed": ratio(ours["median_transfers_per_s"], seed["median_transfers_per_s"])
        if seed
        else None,
        "cpu_vs_raw": ratio(ours["median_client_us_per_op"], raw["median_client_us_per_op"]),
        "cpu_vs_seed": ratio(ours["median_client_us_per_op"], seed["median_client_us_per_op"])
        if seed
        else None,
    }


def _target(
    text: str, value: float | None, minimum: float | None, maximum: float | None
) -> dict[str, Any]:
    ok = None
    if value is not None:
        ok = (minimum is None or value >= minimum) and (maximum is None or value <= maximum)
    return {"target": text, "measured": "-" if value is None else f"{value:.2f}", "ok": ok}


def targets(cells: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Each target with its measured ratio and whether it is met (None: not measured)."""
    found = []
    for cell in cells:
        where = f"{BACKEND_LABELS[cell['backend']]}, {cell['label']}"
        found.append(
            _target(
                f"{where}: safesync_async >= {TARGET_VS_RAW:g} x raw loop (transfers/s)",
                cell["vs_raw"], TARGET_VS_RAW, None,
            )
        )  # fmt: skip
        if "seed" in cell["implementations"] and cell["shape"] in TARGET_VS_SEED_SHAPES:
            found.append(
                _target(
                    f"{where}: safesync_async >= {TARGET_VS_SEED:g} x seed (transfers/s)",
                    cell["vs_seed"], TARGET_VS_SEED, None,
                )
            )  # fmt: skip
        if cell["strategy"] in TARGET_CPU_STRATEGIES:
            found.append(
                _target(
                    f"{where}: safesync_async client CPU/op <= {TARGET_CPU_VS_RAW:g} x raw loop",
                    cell["cpu_vs_raw"], None, TARGET_CPU_VS_RAW,
                )
            )  # fmt: skip
    return found


def summarise(
    runs: list[dict[str, Any]],
    *,
    ops: int,
    reps: int,
    versions: dict[str, str],
    skipped: dict[str, str],
) -> dict[str, Any]:
    """The section's results: every run, one summary per cell, the targets."""
    cells = [
        _cell(
            backend,
            shape,
            strategy,
            [
                r
                for r in runs
                if (r["backend"], r["shape"], r["strategy"]) == (backend, shape, strategy)
            ],
        )
        for backend in versions
        for shape in SHAPES
        for strategy in STRATEGIES
    ]
    return {
        "ops": ops,
        "reps": reps,
        "workers": PRIMITIVE_WORKERS,
        "versions": versions,
        "skipped": skipped,
        "runs": runs,
        "cells": cells,
        "targets": targets(cells),
    }
