"""``safesync partitions``: who owns which partition of a partitioned stream, since when,
and how far behind each partition is."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict

from rich.table import Table
from rich.text import Text

from ..queue.partitions import PartitionStatus
from .render import Output

__all__ = ["render_partitions"]


def render_partitions(
    out: Output, stream: str, group: str, rows: Sequence[PartitionStatus]
) -> None:
    """One line per partition; unowned partitions stand out."""
    unowned = [row.partition for row in rows if row.owner is None]
    if out.as_json:
        out.data(
            {
                "stream": stream,
                "group": group,
                "unowned": unowned,
                "partitions": [asdict(row) for row in rows],
            }
        )
        return
    owners = len({row.owner for row in rows if row.owner is not None})
    title = (
        f"{len(rows)} partitions of {stream!r} for group {group!r}: {owners} owner(s), "
        f"{len(unowned)} unowned"
    )
    table = Table(title=title, title_justify="left")
    for column in ("Partition", "Stream", "Owner", "Epoch", "Since (UTC)", "Lag", "Pending"):
        table.add_column(column)
    for row in rows:
        table.add_row(
            str(row.partition),
            Text(row.stream),
            Text(row.owner) if row.owner else Text("unowned", style="bold red"),
            "" if row.epoch is None else str(row.epoch),
            "" if row.since is None else row.since.strftime("%Y-%m-%d %H:%M:%S"),
            "" if row.lag is None else str(row.lag),
            str(row.pending),
        )
    out.show(table)
