"""How results are shown: rich tables for people, one JSON document per result with
``--json`` (nothing else goes to stdout then). Values that come from Redis are wrapped in
:class:`rich.text.Text`, so a stream name like ``[red]`` is printed, not interpreted."""

from __future__ import annotations

import base64
import json
import os
import sys
from collections.abc import Mapping, Sequence
from dataclasses import asdict
from datetime import UTC, datetime
from typing import Any, Literal

from rich.console import Console, RenderableType
from rich.rule import Rule
from rich.table import Table
from rich.text import Text

from ..queue.dead_letters import DeadLetter
from ..queue.health import GroupHealth, StreamHealth
from ..queue.outbox import OutboxStatus
from .operations import Letter, PendingReport, StreamSummary, holds_idle_entries

__all__ = [
    "Action",
    "Output",
    "changes",
    "dead_letter",
    "dead_letters",
    "decode_value",
    "outbox_status",
    "pending",
    "status",
    "streams",
    "watch_header",
]

_META_KEYS = (
    "original_stream",
    "original_id",
    "group",
    "consumer",
    "deliveries",
    "reason",
    "error",
    "dead_lettered_at_ms",
)
_ERROR_WIDTH = 60
_PIPED_WIDTH = 160
Action = Literal["replay", "purge"]
_PAST: dict[Action, str] = {"replay": "replayed", "purge": "purged"}


class Output:
    """A command's output channel: JSON documents or rich renderables on stdout, and
    one-line errors on stderr."""

    def __init__(self, as_json: bool) -> None:
        self.as_json = as_json
        self._console: Console | None = None

    @property
    def console(self) -> Console:
        """The rich console (created on first use, so it writes to the current stdout)."""
        if self._console is None:
            console = Console(highlight=False)
            if not console.is_terminal and "COLUMNS" not in os.environ:
                console = Console(highlight=False, width=_PIPED_WIDTH)  # not squeezed to 80
            self._console = console
        return self._console

    def data(self, document: Mapping[str, Any]) -> None:
        """Write one JSON document on its own line."""
        print(json.dumps(document, default=str), flush=True)

    def show(self, *views: RenderableType) -> None:
        """Print rich renderables."""
        self.console.print(*views, sep="\n")

    def error(self, message: str) -> None:
        """Report a failure: a line on stderr, and ``{"error": ...}`` in JSON mode."""
        print(f"error: {message}", file=sys.stderr, flush=True)
        if self.as_json:
            self.data({"error": message})


# -- formatting helpers ------------------------------------------------------------


def _duration(seconds: float | None) -> str:
    """A compact human duration: 350ms, 12.5s, 4m05s, 3h20m, 2d04h."""
    if seconds is None:
        return "-"
    if seconds < 1:
        return f"{seconds * 1000:.0f}ms"
    if seconds < 60:
        return f"{seconds:.1f}s"
    minutes, secs = divmod(int(seconds), 60)
    if minutes < 60:
        return f"{minutes}m{secs:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m" if hours < 48 else f"{hours // 24}d{hours % 24:02d}h"


def _when(ms: int) -> str:
    if ms <= 0:
        return "-"
    return datetime.fromtimestamp(ms / 1000, UTC).strftime("%Y-%m-%d %H:%M:%S")


def _plural(count: int, singular: str, plural: str | None = None) -> str:
    return f"{count} {singular if count == 1 else plural or singular + 's'}"


def _optional(value: object) -> str:
    return "-" if value is None else str(value)


def _shorten(text: str, width: int = _ERROR_WIDTH) -> str:
    flat = " ".join(text.split())
    return flat if len(flat) <= width else flat[: width - 1] + "…"


def _table(*columns: str, title: str | None = None) -> Table:
    """A table whose title and headers are plain text (they may hold Redis values)."""
    table = Table(title=Text(title) if title else None, title_justify="left")
    for column in columns:
        table.add_column(Text(column), overflow="fold")
    return table


def decode_value(value: bytes) -> tuple[str, str]:
    """``(text, "utf-8")`` when the bytes are UTF-8, else ``(base64 text, "base64")``."""
    try:
        return value.decode("utf-8"), "utf-8"
    except UnicodeDecodeError:
        return base64.b64encode(value).decode("ascii"), "base64"


def _verdict(problems: Sequence[str]) -> Text:
    if not problems:
        return Text("OK: no threshold exceeded", style="green")
    text = Text("UNHEALTHY", style="bold red")
    for problem in problems:
        text.append(f"\n  - {problem}")
    return text


# -- safesync streams --------------------------------------------------------------


def streams(out: Output, summaries: Sequence[StreamSummary]) -> None:
    """The stream list."""
    if out.as_json:
        out.data({"streams": [asdict(s) for s in summaries]})
        return
    if not summaries:
        out.show("no streams match")
        return
    table = _table("Stream", "Length", "Groups", "Pending", "Max lag")
    for s in summaries:
        lag = "-" if s.groups == 0 else "?" if s.max_lag is None else str(s.max_lag)
        table.add_row(Text(s.stream), str(s.length), str(s.groups), str(s.pending), lag)
    out.show(table)


# -- safesync status ---------------------------------------------------------------


def _idle_consumers(health: StreamHealth, idle_after_ms: int) -> list[dict[str, Any]]:
    return [
        {"group": g.name, "consumer": c.name, "pending": c.pending, "idle_ms": c.idle_ms}
        for g in health.groups
        for c in g.consumers
        if holds_idle_entries(c, idle_after_ms)
    ]


def _stream_line(health: StreamHealth, dead_letter_stream: str) -> Text:
    line = Text.assemble("stream ", (health.stream, "bold"))
    if not health.exists:
        return line.append(": does not exist", style="yellow")
    line.append(
        f": {_plural(health.length, 'entry', 'entries')}, first {_optional(health.first_id)}, "
        f"last {_optional(health.last_id)}, persistence {health.persistence}\n"
    )
    line.append(f"dead letters: {health.dead_letters} in {dead_letter_stream}")
    if health.legacy_dead_letters:
        line.append(
            f"\n{_plural(health.legacy_dead_letters, 'dead letter', 'dead letters')} under the "
            f"old key {health.stream}:dead (replay or purge them with --dead-letter-stream)",
            style="yellow",
        )
    return line


def _groups_table(groups: Sequence[GroupHealth]) -> Table:
    table = _table(
        "Group", "Lag", "Pending", "Oldest pending", "Max deliveries", "Consumers", "Last delivered"
    )
    for g in groups:
        table.add_row(
            Text(g.name),
            "?" if g.lag is None else str(g.lag),
            str(g.pending),
            _duration(g.oldest_pending_age_s),
            str(g.max_delivery_count),
            str(len(g.consumers)),
            g.last_delivered_id,
        )
    return table


def _consumers_table(groups: Sequence[GroupHealth], idle_after_ms: int) -> Table:
    table = _table("Group", "Consumer", "Pending", "Idle", "Note")
    for g in groups:
        for c in g.consumers:
            stalled = holds_idle_entries(c, idle_after_ms)
            table.add_row(
                Text(g.name),
                Text(c.name),
                str(c.pending),
                _duration(c.idle_ms / 1000),
                f"idle, holding {_plural(c.pending, 'entry', 'entries')}" if stalled else "",
                style="bold red" if stalled else None,
            )
    return table


def status(
    out: Output,
    health: StreamHealth,
    *,
    dead_letter_stream: str,
    problems: Sequence[str],
    idle_after_ms: int,
) -> None:
    """The health report of one stream, with the threshold verdict."""
    if out.as_json:
        out.data(
            {
                **health.as_dict(),
                "dead_letter_stream": dead_letter_stream,
                "healthy": not problems,
                "violations": list(problems),
                "idle_consumers": _idle_consumers(health, idle_after_ms),
            }
        )
        return
    views: list[RenderableType] = [_stream_line(health, dead_letter_stream)]
    if health.groups:
        views.append(_groups_table(health.groups))
        if any(g.consumers for g in health.groups):
            views.append(_consumers_table(health.groups, idle_after_ms))
    elif health.exists:
        views.append("no consumer groups")
    out.show(*views, _verdict(problems))


def watch_header(out: Output, round_number: int, *, watching: bool) -> None:
    """With ``--watch`` (rich output only): clear the terminal between rounds and show
    the time of each report."""
    if out.as_json or not watching:
        return
    if round_number and out.console.is_terminal:
        out.console.clear()
    out.show(Rule(datetime.now().strftime("%H:%M:%S"), align="left"))


# -- safesync pending --------------------------------------------------------------


def pending(out: Output, report: PendingReport) -> None:
    """The pending entries of a group."""
    if out.as_json:
        out.data(asdict(report))
        return
    whose = f"consumer {report.consumer!r} in " if report.consumer else ""
    title = f"{report.total} pending in {whose}group {report.group!r} of {report.stream!r}"
    table = _table("Id", "Consumer", "Idle", "Idle ms", "Deliveries", title=title)
    for e in report.entries:
        table.add_row(
            e.id,
            Text(e.consumer),
            _duration(e.idle_ms / 1000),
            str(e.idle_ms),
            str(e.delivery_count),
        )
    out.show(table)


# -- safesync dead-letters ---------------------------------------------------------


def _meta_json(meta: DeadLetter | None) -> dict[str, Any]:
    if meta is None:
        return dict.fromkeys(_META_KEYS)
    values = {name: getattr(meta, name) for name in _META_KEYS}
    values["reason"] = meta.reason.value
    return values


def _letter_json(letter: Letter) -> dict[str, Any]:
    fields = []
    for name, value in letter.fields.items():
        text, encoding = decode_value(value)
        fields.append({"name": decode_value(name)[0], "value": text, "encoding": encoding})
    return {"id": letter.id, **_meta_json(letter.meta), "fields": fields}


def dead_letters(
    out: Output, letters: Sequence[Letter], *, dead_letter_stream: str, total: int
) -> None:
    """A page of dead letters, oldest first."""
    if out.as_json:
        out.data(
            {
                "dead_letter_stream": dead_letter_stream,
                "total": total,
                "entries": [_letter_json(letter) for letter in letters],
            }
        )
        return
    title = f"{_plural(total, 'dead letter')} in {dead_letter_stream} (showing {len(letters)})"
    table = _table(
        "Id", "Original id", "Reason", "Deliveries", "Group", "At (UTC)", "Error", title=title
    )
    for letter in letters:
        meta = letter.meta
        if meta is None:
            table.add_row(letter.id, "-", "? (no dlq metadata)", "-", "-", "-", "-")
            continue
        table.add_row(
            letter.id,
            meta.original_id,
            meta.reason.value,
            str(meta.deliveries),
            Text(meta.group),
            _when(meta.dead_lettered_at_ms),
            Text(_shorten(meta.error)),
        )
    out.show(table)


def dead_letter(out: Output, letter: Letter, *, dead_letter_stream: str) -> None:
    """One dead letter: its metadata and the original fields, decoded where UTF-8."""
    if out.as_json:
        out.data({"dead_letter_stream": dead_letter_stream, **_letter_json(letter)})
        return
    meta = _table("Dead letter", letter.id)
    for key, value in _meta_json(letter.meta).items():
        if key == "dead_lettered_at_ms":
            key, value = "dead-lettered at (UTC)", _when(value or 0)
        meta.add_row(key.replace("_", " "), Text(_optional(value)))
    fields = _table("Field", "Value", title="original fields")
    for name, value in letter.fields.items():
        text, encoding = decode_value(value)
        cell = Text(text) if encoding == "utf-8" else Text(f"(not UTF-8, base64) {text}", "dim")
        fields.add_row(Text(decode_value(name)[0]), cell)
    out.show(meta, fields if letter.fields else "no original fields (a tombstone)")


def changes(
    out: Output,
    *,
    action: Action,
    applied: bool,
    dead_letter_stream: str,
    rows: Sequence[Mapping[str, str]],
    skipped: Sequence[str] = (),
) -> None:
    """What a replay or purge did, or (``applied=False``) would do."""
    if out.as_json:
        out.data(
            {
                "action": action,
                "dry_run": not applied,
                "dead_letter_stream": dead_letter_stream,
                "entries": list(rows),
                "skipped": list(skipped),
            }
        )
        return
    views: list[RenderableType] = []
    if rows:
        table = _table(*rows[0].keys())
        for row in rows:
            table.add_row(*(Text(value) for value in row.values()))
        views.append(table)
    if skipped:
        views.append(Text(f"skipped (tombstones or no dead-letter metadata): {', '.join(skipped)}"))
    if not rows:
        views.append(Text(f"nothing to {action}"))
    elif applied:
        views.append(
            Text(f"{_PAST[action]} {_plural(len(rows), 'dead letter')} from {dead_letter_stream}")
        )
    else:
        views.append(
            Text(
                f"would {action} {_plural(len(rows), 'dead letter')} from {dead_letter_stream}; "
                "nothing changed, run again with --yes to do it",
                style="yellow",
            )
        )
    out.show(*views)


# -- safesync outbox ---------------------------------------------------------------


def outbox_status(out: Output, table: str, state: OutboxStatus, problems: Sequence[str]) -> None:
    """Pending and sent rows of an outbox table."""
    if out.as_json:
        out.data(
            {"table": table, **asdict(state), "healthy": not problems, "violations": list(problems)}
        )
        return
    grid = _table("Outbox", table)
    grid.add_row("pending", str(state.pending))
    grid.add_row("oldest pending age", _duration(state.oldest_pending_age_s))
    grid.add_row("sent", str(state.sent))
    out.show(grid, _verdict(problems))
