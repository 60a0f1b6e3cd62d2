"""The suite's own instruments: the delivery checker counts a hand-made outcome exactly,
and the report renders every family with its totals."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from redis.asyncio import Redis
from sqlalchemy.ext.asyncio import AsyncEngine

from safesync_async import (
    DbSession,
    DeadLetterReason,
    dead_letter_key,
)
from safesync_async.queue.dead_letters import dead_letter_fields

from ..support.checker import add_entry, count_delivery
from ..support.reliability import FAMILIES, ReliabilityReport

pytestmark = pytest.mark.faults


async def test_checker_counts_a_known_outcome(
    engine: AsyncEngine, redis: Redis, stream: str, effects: str
) -> None:
    """Applied, duplicated, dead-lettered, reported-deleted, unknown, lost, pending and
    applied-but-pending messages are each counted where they belong, nothing guessed."""
    await redis.xgroup_create(stream, "g", id="0", mkstream=True)
    ids = [await add_entry(redis, stream, {b"data": b'{"n": %d}' % n}) for n in range(7)]
    keys = [f"id:{i}" for i in ids]
    await redis.xreadgroup("g", "c", {stream: ">"}, count=7)
    await redis.xack(stream, "g", *ids[:6])  # ids[6] stays pending
    async with DbSession(engine, registry=None) as session:
        for index in (0, 1, 1, 6):  # 0 once, 1 twice, 6 applied but still pending
            await session.execute(
                f"INSERT INTO `{effects}` (message_id, message_key, n) VALUES (:id, :key, 0)",
                {"id": ids[index], "key": keys[index]},
            )
        await session.execute(
            f"INSERT INTO `{effects}` (message_id, message_key, n) VALUES ('0-1', 'id:0-1', 0)"
        )
    for index, reason in ((2, DeadLetterReason.UNDECODABLE), (3, DeadLetterReason.DELETED)):
        fields = dead_letter_fields(
            stream=stream, entry_id=ids[index], group="g", consumer="c", deliveries=1,
            reason=reason, error="test", original={},
        )  # fmt: skip
        await add_entry(redis, dead_letter_key(stream), fields)
    counts = await count_delivery(
        redis, engine, stream=stream, group="g", effects=effects, sent=keys[:4] + keys[5:],
        unknown=[keys[4], "key:never-published"],
    )  # fmt: skip
    assert (counts.sent, counts.applied, counts.effect_rows, counts.duplicated) == (6, 3, 5, 1)
    assert counts.dead_lettered == {"undecodable": 1}
    assert (counts.reported_deleted, counts.dead_letter_duplicates) == (1, 0)
    assert (counts.unknown, counts.unknown_applied) == (2, 0)
    assert (counts.lost, counts.lost_keys) == (1, (keys[5],))
    assert (counts.left_pending, counts.applied_but_pending, counts.unexpected) == (1, 1, 1)
    assert counts.row(faults=2)["faults"] == 2


def test_report_renders_families_totals_and_defects() -> None:
    """The markdown has the reproduction command, one table per family in order with a
    totals line, extra figures in the details cell, and the known defects listed."""
    report = ReliabilityReport(versions={"Database (shared)": "test-db"})
    first = report.recorder("t.py::a")
    first.record("Contention", "x", workers=2, committed=10, retries=3)
    first.record("Contention", "y | z", workers=3, committed=5)
    report.recorder("t.py::b").record("Server-fault timings", "freeze", detection_s=1.5)
    report.recorder("t.py::c").record("Server-fault timings", "hang", detection_s=2.25)
    report.note_outcome("t.py::a", "passed", 1.0)
    report.note_outcome("t.py::b", "passed", 2.0)
    report.note_outcome("t.py::c", "xfailed", 3.0, "library defect: it hangs")
    with pytest.raises(ValueError, match="unknown family"):
        first.record("Nonsense", "x")
    text = report.render(now=datetime(2025, 1, 2, 3, 4, tzinfo=UTC))
    assert "`nox -s faults`" in text and "2025-01-02 03:04 UTC" in text and "test-db" in text
    assert text.index("## Contention") < text.index("## Server-fault timings")
    assert "## Delivery under faults" not in text  # no rows, no table
    assert "| x | yes | 2 | 10 |" in text and "retries 3" in text and "y \\| z" in text
    assert "| **Totals** (2) |  | 5 | 15 |" in text
    assert "| **Totals** (2) |  |  | 2.25 |  | 5.00 |  |" in text  # seconds: the maximum
    assert "**no** (known defect)" in text and "library defect: it hangs" in text
    headings = [line[3:] for line in text.splitlines() if line.startswith("## ")]
    assert headings == [f for f in FAMILIES if f in headings] + ["Known library defects"]
