"""The reliability report: figures recorded by fault scenarios, written as markdown.

Scenarios call ``reliability.record(family, scenario, **figures)`` (the fixture of
``tests/faults/conftest.py``); at the end of the session, when the environment variable
:data:`ENV_VAR` names a file, :meth:`ReliabilityReport.render` is written there. Every
figure comes from a run: nothing in the file is typed by hand.
"""

from __future__ import annotations

import os
import platform
import re
import subprocess
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime

import redis.asyncio
from sqlalchemy.ext.asyncio import create_async_engine
from sqlalchemy.pool import NullPool

import safesync_async

__all__ = [
    "ENV_VAR",
    "FAMILIES",
    "Family",
    "Figure",
    "Recorder",
    "ReliabilityReport",
    "server_versions",
]

ENV_VAR = "SAFESYNC_RELIABILITY_REPORT"
COMMAND = "nox -s faults"
UNDERLYING = f"{ENV_VAR}=docs/reliability.md pytest -m faults"


@dataclass(frozen=True)
class Family:
    """One table of the report: what it shows and its columns; figures a scenario records
    beyond these go to its *details* cell."""

    description: str
    columns: tuple[str, ...]


#: The report's tables, in order.
FAMILIES: Mapping[str, Family] = {
    "Delivery under faults": Family(
        "Consumers, Redis and the database are killed, frozen or cut while messages flow. "
        "*lost*: sent, and neither applied, dead-lettered, reported deleted nor of unknown "
        "publication outcome. *duplicate effects*: effect rows beyond the first per message "
        "(the inbox must keep it at 0). *unknown*: publications whose outcome was never "
        "known (counted apart, never guessed). The restart of a Redis *without* "
        "persistence loses its unconsumed backlog by design: that row's *lost* is the "
        "measured size of that loss, not a failure.",
        (
            "messages",
            "faults",
            "applied",
            "lost",
            "duplicate_effects",
            "dead_lettered",
            "unknown",
            "left_pending",
        ),
    ),
    "Redis Cluster failover": Family(
        "A private Redis Cluster (3 masters, 3 replicas, cluster-node-timeout 2 s, AOF) "
        "whose master serving the stream is SIGKILLed or failed over (CLUSTER FAILOVER) "
        "while a producer publishes one message at a time (retrying a failed publication "
        "with the same idempotency key until it is confirmed) and a consumer with an inbox "
        "applies them. *messages*: confirmed publications. *missing entries*: confirmed "
        "entries the promoted replica never received (Redis's own loss window: a master "
        "acknowledges an XADD before replicating it). *lost*: confirmed and never applied. "
        "*outage s*: from the fault to the next confirmed publication. With *wait replicas* "
        "1 a publication is confirmed only once the replica has it (WAIT).",
        (
            "messages",
            "wait_replicas",
            "outage_s",
            "missing_entries",
            "lost",
            "duplicate_effects",
            "dead_lettered",
            "left_pending",
        ),
    ),
    "Partitioned streams": Family(
        "Members of one group share a partitioned stream (8 partitions, lease TTL 2 s) in "
        "separate processes while keyed messages flow, each carrying its key's sequence "
        "number; the handler applies a number only if it is the key's next. One member is "
        "SIGKILLed and replaced, one stops gracefully (SIGTERM), one is frozen (SIGSTOP) "
        "past its lease and resumed. *lost*: published and never applied. *duplicate "
        "effects*: a number applied again. *order violations*: a number applied when it was "
        "not the key's next. *fenced*: transactions of a former owner refused by the epoch "
        "check. *rebalance*: from each event until every partition is owned by a live "
        "member and the shares are even (max and median over the events; per event in the "
        "details). The control row runs without inbox and fencing: the check catches it.",
        (
            "messages",
            "lost",
            "duplicate_effects",
            "order_violations",
            "fenced",
            "lease_losses",
            "rebalance_max_s",
            "rebalance_median_s",
        ),
    ),
    "Contention": Family(
        "Concurrent writers on a few hot rows. Money must be conserved and every balance "
        "must equal its opening balance plus the committed transfers. *lost updates* is "
        "only non-zero for the deliberately unsafe variant: a known hazard, measured.",
        (
            "workers",
            "committed",
            "deadlocks_retried",
            "conflicts_retried",
            "serialization_retried",
            "gave_up",
            "lost_updates",
            "money_drift",
        ),
    ),
    "Cancellation and pool hygiene": Family(
        "Tasks cancelled at random points of a session. After each one: no connection "
        "checked out, no pooled connection with an open transaction, no named lock held, "
        "the lock wait timeout back to the server default.",
        (
            "cancellations",
            "leaked_connections",
            "open_transactions",
            "held_named_locks",
            "changed_lock_timeouts",
            "lock_waits_left",
        ),
    ),
    "Bad inputs": Family(
        "Hostile or broken inputs mixed with good traffic: each must be dead-lettered, "
        "reported or rejected with the right reason, every good message applied once, the "
        "loop kept running.",
        ("bad_inputs", "handled_as_expected", "good_messages", "good_applied_once", "sql_sent"),
    ),
    "Server-fault timings": Family(
        "How long it takes to notice a frozen or vanished server, against the configured "
        "bound, and to recover once it is back (seconds, measured by polling).",
        ("bound_s", "detection_s", "recovery_s"),
    ),
}

Figure = int | float | str | bool
_TEST_SECONDS = "test_seconds"


@dataclass
class _Row:
    family: str
    scenario: str
    figures: dict[str, Figure]
    test: str


@dataclass
class _Outcome:
    outcome: str
    seconds: float
    reason: str = ""


@dataclass
class ReliabilityReport:
    """Everything recorded during one pytest session."""

    rows: list[_Row] = field(default_factory=list)
    outcomes: dict[str, _Outcome] = field(default_factory=dict)
    versions: dict[str, str] | None = None

    def recorder(self, test: str) -> Recorder:
        return Recorder(self, test)

    def note_outcome(self, test: str, outcome: str, seconds: float, reason: str = "") -> None:
        """The pytest outcome of a test (its call phase, or a failed setup); ``reason``:
        why it is expected to fail (xfail)."""
        self.outcomes[test] = _Outcome(outcome, seconds, reason)

    def render(self, *, now: datetime | None = None) -> str:
        moment = (now or datetime.now(UTC)).strftime("%Y-%m-%d %H:%M UTC")
        versions = {**(self.versions or {}), **_binary_versions()}
        tests = {row.test for row in self.rows}
        failed = sorted(t for t in tests if self._outcome(t) == "failed")
        known = sorted(t for t in tests if self._outcome(t) == "xfailed")
        summary = f"- {len(self.rows)} scenario rows from {len(tests)} tests: "
        summary += f"{len(tests) - len(failed) - len(known)} held their invariants"
        if known:
            summary += (
                f", {len(known)} show a known library defect (xfail: "
                + ", ".join(f"`{t}`" for t in known)
                + ")"
            )
        if failed:
            summary += f", **{len(failed)} FAILED**: " + ", ".join(f"`{t}`" for t in failed)
        lines = [
            "# Reliability under faults and bad inputs",
            "",
            f"Produced by `{COMMAND}` (it runs `{UNDERLYING}`). Every figure below was "
            "measured by that run; the file is regenerated, never edited by hand.",
            "",
            f"- Date: {moment}",
            *(f"- {name}: {value}" for name, value in versions.items()),
            f"- Python {platform.python_version()}, safesync_async {safesync_async.__version__}, "
            f"{platform.system()} {platform.machine()}, {os.cpu_count()} CPU(s)",
            summary + ".",
            "",
            "*held*: the test asserting the scenario's invariants passed (*known defect*: it "
            "fails because of a library defect and is marked xfail). Totals add the counts; "
            "columns in seconds (`… s`) show the maximum, except *test seconds*.",
        ]
        for name, family in FAMILIES.items():
            rows = [row for row in self.rows if row.family == name]
            if rows:
                lines += ["", f"## {name}", "", family.description, "", *self._table(family, rows)]
        if known:
            lines += ["", "## Known library defects", ""]
            lines += [f"- `{t}`: {self.outcomes[t].reason}" for t in known]
        return "\n".join(lines) + "\n"

    def _outcome(self, test: str) -> str:
        outcome = self.outcomes.get(test)
        return outcome.outcome if outcome is not None else "unknown"

    def _held(self, test: str) -> str:
        outcome = self.outcomes.get(test)
        if outcome is None:
            return "?"
        return {
            "passed": "yes",
            "failed": "**no**",
            "xfailed": "**no** (known defect)",
        }.get(outcome.outcome, outcome.outcome)

    def _table(self, family: Family, rows: list[_Row]) -> list[str]:
        seen_tests: set[str] = set()
        cells: list[dict[str, Figure]] = []
        for row in rows:
            figures = dict(row.figures)
            if row.test not in seen_tests:  # a test's time goes on its first row only
                seen_tests.add(row.test)
                outcome = self.outcomes.get(row.test)
                if outcome is not None:
                    figures[_TEST_SECONDS] = outcome.seconds
            cells.append(figures)
        columns = [*family.columns, _TEST_SECONDS]
        header = ["Scenario", "held", *(_heading(c) for c in columns), "details"]
        out = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        for row, figures in zip(rows, cells, strict=True):
            values = [_format(figures.get(c)) for c in columns]
            details = ", ".join(
                f"{_heading(name)} {_format(value)}"
                for name, value in figures.items()
                if name not in columns
            )
            cells_out = [_escape(row.scenario), self._held(row.test), *values, _escape(details)]
            out.append("| " + " | ".join(cells_out) + " |")
        totals = [_format(_total(c, [f.get(c) for f in cells])) for c in columns]
        out.append("| " + " | ".join([f"**Totals** ({len(rows)})", "", *totals, ""]) + " |")
        return out


@dataclass
class Recorder:
    """What a test sees: ``record(family, scenario, **figures)``."""

    report: ReliabilityReport
    test: str

    def record(self, family: str, scenario: str, **figures: Figure) -> None:
        if family not in FAMILIES:
            raise ValueError(f"unknown family {family!r}; use one of {list(FAMILIES)}")
        self.report.rows.append(_Row(family, scenario, dict(figures), self.test))


async def server_versions(database_url: str, redis_url: str) -> dict[str, str]:
    """Versions of the shared servers the suite runs against."""
    versions: dict[str, str] = {}
    engine = create_async_engine(database_url, poolclass=NullPool)
    try:
        async with engine.connect() as conn:
            found = (await conn.exec_driver_sql("SELECT VERSION()")).scalar()
            versions["Database (shared)"] = str(found)
    except Exception as exc:
        versions["Database (shared)"] = f"unknown ({type(exc).__name__})"
    finally:
        await engine.dispose()
    client = redis.asyncio.Redis.from_url(redis_url, socket_timeout=5)
    try:
        info = await client.info("server")
        versions["Redis (shared)"] = str(info.get("redis_version", "unknown"))
    except Exception as exc:
        versions["Redis (shared)"] = f"unknown ({type(exc).__name__})"
    finally:
        await client.aclose()
    return versions


def _binary_versions() -> dict[str, str]:
    """Versions of the binaries the private (killed, paused) instances run."""
    found: dict[str, str] = {}
    for label, command in (
        ("Private MariaDB instances", ["mariadbd", "--version"]),
        ("Private Redis instances", ["redis-server", "--version"]),
    ):
        try:
            output = subprocess.run(
                command, capture_output=True, text=True, timeout=10, check=False
            ).stdout
        except OSError:
            continue
        match = re.search(r"(?:Ver |v=)(\S+)", output)
        if match:
            found[label] = match.group(1)
    return found


def _heading(name: str) -> str:
    if name.endswith("_s"):
        return name[:-2].replace("_", " ") + " s"
    return name.replace("_", " ")


def _format(value: Figure | None) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.2f}"
    return _escape(str(value))


def _total(column: str, values: list[Figure | None]) -> Figure | None:
    numbers = [v for v in values if isinstance(v, int | float) and not isinstance(v, bool)]
    if not numbers:
        return None
    if column.endswith("_s"):
        return max(float(v) for v in numbers)
    if all(isinstance(v, int) for v in numbers):
        return sum(int(v) for v in numbers)
    return float(sum(numbers))


def _escape(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")
