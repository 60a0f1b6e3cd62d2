"""The primitives part of the markdown report, rendered from the section's results."""

from __future__ import annotations

from typing import Any

from ..markdown import num, table
from ..settings import DISTURBED_SHARE
from .summary import BACKEND_LABELS, IMPLEMENTATION_LABELS


def _ratio(value: float | None) -> str:
    return num(value, 2)


def _rate(summary: dict[str, Any], reps: int) -> str:
    median = num(summary["median_transfers_per_s"])
    if summary["ok_runs"] < 2:
        return median
    low, high = num(summary["min_transfers_per_s"]), num(summary["max_transfers_per_s"])
    return f"{median} ({low} to {high})"


def _retries(summary: dict[str, Any]) -> str:
    found = {reason: n for reason, n in summary["median_retries"].items() if n}
    if not found:
        return "0"
    return ", ".join(f"{num(n)} {reason.replace('_', ' ')}" for reason, n in found.items())


def _database(section: dict[str, Any], backend: str) -> list[str]:
    cells = [c for c in section["cells"] if c["backend"] == backend]
    names = list(IMPLEMENTATION_LABELS[backend])
    labels = [IMPLEMENTATION_LABELS[backend][n] for n in names]
    has_seed = "seed" in names
    reps = section["reps"]
    lines = [f"### {BACKEND_LABELS[backend]} ({section['versions'][backend]})", ""]
    lines += [
        "Committed transfers/s, median"
        + (" (min to max)" if reps > 1 else "")
        + "; ÷ raw and ÷ seed are safesync_async's ratios.",
        "",
    ]
    header = ["Shape · strategy", *labels, "÷ raw", *(["÷ seed"] if has_seed else [])]
    rows = [
        [
            c["label"],
            *(_rate(c["implementations"][n], reps) for n in names),
            _ratio(c["vs_raw"]),
            *([_ratio(c["vs_seed"])] if has_seed else []),
        ]
        for c in cells
    ]
    lines += [*table(header, rows), ""]
    lines += [
        "Client CPU µs per transfer (the worker process, all its threads; retries",
        "included) and database server CPU µs per transfer, medians:",
        "",
    ]
    header = [
        "Shape · strategy",
        *(f"client: {label}" for label in labels),
        "client ÷ raw",
        *(f"server: {label}" for label in labels),
    ]
    rows = [
        [
            c["label"],
            *(num(c["implementations"][n]["median_client_us_per_op"]) for n in names),
            _ratio(c["cpu_vs_raw"]),
            *(num(c["implementations"][n]["median_server_us_per_op"]) for n in names),
        ]
        for c in cells
    ]
    lines += [*table(header, rows), ""]
    lines += ["Latency per transfer (retries included) and retries per run, medians:", ""]
    rows = [
        [
            c["label"],
            IMPLEMENTATION_LABELS[backend][n],
            num(s["median_p50_ms"], 2),
            num(s["median_p99_ms"], 2),
            _retries(s),
            f"{s['ok_runs']}/{s['runs']}",
            str(s["disturbed_runs"]),
        ]
        for c in cells
        for n, s in c["implementations"].items()
    ]
    header = [
        "Shape · strategy", "Implementation", "p50 ms", "p99 ms", "retries per run",
        "verified runs", "disturbed runs",
    ]  # fmt: skip
    return [*lines, *table(header, rows), ""]


def render_primitives(section: dict[str, Any]) -> list[str]:
    """The comparison tables of every database measured."""
    lines = [
        f"## Database primitives: transfers, {section['workers']} concurrent workers, "
        f"{section['ops']:,} transfers per run, median of {section['reps']}",
        "",
        "Each transfer moves a random amount between two distinct random accounts (1,000",
        "accounts, or 5 hot ones), the same seeded sequence for every implementation; every",
        "implementation runs the same SQL in its own process. A run is verified (money",
        "conserved, every transfer committed once) and left out of the medians if it fails;",
        f"it is *disturbed* when CPU used by neither the worker nor the servers exceeded "
        f"{DISTURBED_SHARE:.0%} of the machine during it.",
        "",
    ]
    for backend in section["versions"]:
        lines += _database(section, backend)
    for backend, reason in section["skipped"].items():
        lines += [f"{BACKEND_LABELS[backend]} was skipped: {reason}", ""]
    return lines
