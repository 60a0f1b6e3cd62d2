"""The ``safesync`` command line against the real servers: the figures it prints (rich
tables and --json), exit codes of health thresholds, dry runs and real runs of dead-letter
replay/purge, the outbox status, and errors reported as one line."""

from __future__ import annotations

import base64
import json
import re
import subprocess
import sys
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any, cast

import anyio
import pytest
from redis.asyncio import Redis
from sqlalchemy.ext.asyncio import AsyncEngine
from typer.testing import CliRunner, Result

from safesync_async import (
    DbSession,
    Outbox,
    QueueConfig,
    QueueConsumer,
    QueueProducer,
    create_engine,
    create_redis_client,
    dead_letter_key,
)
from safesync_async.cli import app

from .support.settings import DATABASE_URL, POSTGRES_URL, REDIS_URL

GROUP = "workers"
POISON = {b"data": b"\xff\xfe not JSON, not UTF-8", b"trace": b"t-1"}
UNREACHABLE_REDIS = "redis://127.0.0.1:1/0"


# -- helpers -------------------------------------------------------------------------


async def invoke(*args: str) -> Result:
    """Run ``safesync ARGS`` against the test servers, in a worker thread (each command
    runs its own event loop with asyncio.run)."""
    argv = ["--redis", REDIS_URL, "--database", DATABASE_URL, *args]
    runner = CliRunner()
    return await anyio.to_thread.run_sync(lambda: runner.invoke(app, argv, env={"COLUMNS": "200"}))


async def invoke_json(*args: str) -> tuple[int, Any]:
    """Run ``safesync --json ARGS``; stdout must be exactly one JSON document."""
    result = await invoke("--json", *args)
    return result.exit_code, json.loads(result.stdout)


def rows(output: str) -> list[list[str]]:
    """The cells of every table row printed."""
    cells = ([cell.strip() for cell in line.split("│")[1:-1]] for line in output.splitlines())
    return [line for line in cells if line]


def row(output: str, first_cell: str) -> list[str]:
    """The cells of the first table row whose first cell is ``first_cell``."""
    for cells in rows(output):
        if cells[0] == first_cell:
            return cells
    raise AssertionError(f"no row {first_cell!r} in:\n{output}")


def consumer(redis: Redis, stream: str, name: str, *, max_deliveries: int = 5) -> QueueConsumer:
    """A consumer of the test group."""
    config = QueueConfig(
        stream_key=stream,
        consumer_group=GROUP,
        consumer_name=name,
        max_deliveries=max_deliveries,
        block_ms=10,
    )
    return QueueConsumer(redis, config, registry=None)


async def backlog(redis: Redis, stream: str, *, total: int, held: dict[str, int]) -> list[str]:
    """Publish ``total`` entries; each named consumer then holds that many pending
    (so the group's lag is ``total - sum(held)``). Returns the entry ids."""
    ids = await QueueProducer(redis, stream, registry=None).publish_batch(
        {"n": n} for n in range(total)
    )
    for name, count in held.items():
        reader = consumer(redis, stream, name)
        for _ in range(count):
            assert await reader.next(block_ms=10) is not None
    return ids


async def entries(redis: Redis, key: str, start: str = "-") -> list[tuple[str, dict[bytes, bytes]]]:
    """``(id, fields)`` of the entries of stream ``key`` from ``start`` on."""
    found = await redis.xrange(key, min=start)
    return [(cast(bytes, i).decode(), cast(dict[bytes, bytes], f)) for i, f in found or []]


async def entry_ids(redis: Redis, key: str) -> list[str]:
    """The ids of the entries of stream ``key``."""
    return [entry_id for entry_id, _ in await entries(redis, key)]


@dataclass(frozen=True)
class DeadLettered:
    poison_id: str  # original entry ids
    failed_id: str
    letter_ids: list[str]  # ids in the dead-letter stream: poison's, then failed's


async def dead_letter_two(redis: Redis, stream: str) -> DeadLettered:
    """Dead-letter two entries through the library: an undecodable one at once, and a
    valid one whose second delivery exceeds max_deliveries=1."""
    producer = QueueProducer(redis, stream, registry=None)
    [poison_id] = await producer.add_fields([POISON])
    failed_id = await producer.publish({"n": 1}, idempotency_key="k-1")
    message = await consumer(redis, stream, "c1", max_deliveries=1).next(block_ms=10)
    assert message is not None and message.id == failed_id  # the poison went on the way
    await consumer(redis, stream, "c2", max_deliveries=1).claim_stale(min_idle_ms=0)
    letter_ids = await entry_ids(redis, dead_letter_key(stream))
    assert len(letter_ids) == 2
    return DeadLettered(poison_id, failed_id, letter_ids)


@pytest.fixture
async def redis() -> AsyncIterator[Redis]:
    """A client made by the library's factory."""
    client = create_redis_client(REDIS_URL, block_ms=200)
    try:
        yield client
    finally:
        await client.aclose()


@pytest.fixture
async def mysql_engine() -> AsyncIterator[AsyncEngine]:
    """An engine on the database the CLI is pointed at (``--database``)."""
    created = create_engine(DATABASE_URL, pool_size=2)
    try:
        yield created
    finally:
        await created.dispose()


@pytest.fixture
async def stream(redis: Redis, unique_name: Callable[[str], str]) -> AsyncIterator[str]:
    """A unique stream key; it, its dead-letter streams (current and legacy) and
    ``<key>:other`` are deleted."""
    key = unique_name("test-cli")
    yield key
    await redis.delete(key, dead_letter_key(key), f"{key}:dead", f"{key}:other")


# -- packaging -----------------------------------------------------------------------


def _python(code: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", code, *args], capture_output=True, text=True, check=False
    )


def test_the_library_does_not_need_the_cli_extra() -> None:
    """Importing safesync_async loads neither typer, rich nor click."""
    done = _python(
        "import sys, safesync_async; print(sorted({'typer', 'rich', 'click'} & set(sys.modules)))"
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


def test_python_dash_m_runs_the_app_or_names_the_extra() -> None:
    """``python -m safesync_async.cli`` runs the app; without typer it says to install
    safesync-async[cli] and exits 2, without a traceback."""
    run_module = "import runpy; runpy.run_module('safesync_async.cli', run_name='__main__')"
    done = _python(f"import sys; sys.argv[1:] = ['--help']; {run_module}")
    assert done.returncode == 0 and "dead-letters" in done.stdout
    done = _python(f"import sys; sys.modules['typer'] = None; {run_module}")
    assert done.returncode == 2
    assert "install safesync-async[cli]" in done.stderr and "Traceback" not in done.stderr


# -- streams -------------------------------------------------------------------------


async def test_streams_lists_length_groups_pending_and_lag(redis: Redis, stream: str) -> None:
    """Each matching stream shows its length, group count, total pending and max lag."""
    await backlog(redis, stream, total=5, held={"c1": 2})
    await QueueProducer(redis, f"{stream}:other", registry=None).publish_batch([{}, {}, {}])
    code, document = await invoke_json("streams", "--pattern", f"{stream}*")
    assert code == 0
    assert document["streams"] == [
        {"stream": stream, "length": 5, "groups": 1, "pending": 2, "max_lag": 3},
        {"stream": f"{stream}:other", "length": 3, "groups": 0, "pending": 0, "max_lag": None},
    ]
    result = await invoke("streams", "--pattern", f"{stream}*")
    assert result.exit_code == 0
    assert row(result.stdout, stream) == [stream, "5", "1", "2", "3"]
    assert row(result.stdout, f"{stream}:other") == [f"{stream}:other", "3", "0", "0", "-"]


# -- status --------------------------------------------------------------------------


async def test_status_reports_lag_pending_consumers_and_dead_letters(
    redis: Redis, stream: str
) -> None:
    """The health report has the length, lag, pending count, delivery counts, consumers
    and dead letters; idle consumers holding entries are flagged; it exits 0."""
    await dead_letter_two(redis, stream)  # 2 entries, both settled in the dead-letter stream
    await backlog(redis, stream, total=5, held={"c1": 2})
    code, health = await invoke_json("status", stream, "--idle-after", "0")
    assert code == 0
    assert (health["exists"], health["length"], health["dead_letters"]) == (True, 7, 2)
    assert health["dead_letter_stream"] == dead_letter_key(stream)
    [group] = health["groups"]
    assert (group["name"], group["lag"], group["pending"]) == (GROUP, 3, 2)
    assert group["max_delivery_count"] == 1 and 0 <= group["oldest_pending_age_s"] < 60
    assert {c["name"]: c["pending"] for c in group["consumers"]} == {"c1": 2, "c2": 0}
    assert [c["consumer"] for c in health["idle_consumers"]] == ["c1"]
    assert (health["healthy"], health["violations"]) == (True, [])

    result = await invoke("status", stream, "--idle-after", "0")
    assert result.exit_code == 0
    assert row(result.stdout, GROUP)[1:3] == ["3", "2"]
    assert "dead letters: 2" in result.stdout
    consumers = {cells[1]: cells for cells in rows(result.stdout) if len(cells) == 5}
    assert consumers["c1"][2] == "2" and consumers["c1"][4] == "idle, holding 2 entries"
    assert consumers["c2"][2] == "0" and consumers["c2"][4] == ""


async def test_status_thresholds_set_the_exit_code(redis: Redis, stream: str) -> None:
    """Within every threshold the exit code is 0; over any, 1 and the excess is named."""
    await backlog(redis, stream, total=5, held={"c1": 2})
    within = ["--max-lag", "3", "--max-pending", "2", "--max-deliveries", "1"]
    result = await invoke("status", stream, *within, "--max-pending-age", "3600")
    assert result.exit_code == 0 and "OK" in result.stdout

    result = await invoke("status", stream, "--max-lag", "2")
    assert result.exit_code == 1
    assert f"group '{GROUP}': lag 3 > 2" in result.stdout
    code, health = await invoke_json("status", stream, "--max-pending", "1")
    assert code == 1 and health["violations"] == [f"group '{GROUP}': pending 2 > 1"]
    code, health = await invoke_json("status", stream, "--max-deliveries", "0")
    assert code == 1 and health["healthy"] is False
    await QueueProducer(redis, dead_letter_key(stream), registry=None).publish({})
    code, health = await invoke_json("status", stream, "--max-dead-letters", "0")
    assert code == 1 and health["violations"] == ["dead letters 1 > 0"]


async def test_status_flags_dead_letters_under_the_old_key(redis: Redis, stream: str) -> None:
    """Dead letters left under the key used before the key layout (STREAM:dead) are
    counted and flagged with what to do; naming that key lists them; a stream name no
    dead-letter key can follow is a usage error, not a traceback."""
    await backlog(redis, stream, total=1, held={})
    await redis.xadd(f"{stream}:dead", {"x": "1"})
    code, health = await invoke_json("status", stream)
    assert code == 0 and (health["dead_letters"], health["legacy_dead_letters"]) == (0, 1)
    result = await invoke("status", stream)
    assert f"1 dead letter under the old key {stream}:dead" in " ".join(result.stdout.split())
    code, listed = await invoke_json(
        "dead-letters", "list", stream, "--dead-letter-stream", f"{stream}:dead"
    )
    assert code == 0 and listed["total"] == 1
    result = await invoke("status", "a}b")
    assert result.exit_code == 2 and "hash tag" in result.output


async def test_status_watch_repeats_and_missing_streams_are_healthy(stream: str) -> None:
    """--watch prints one report per round (one JSON document per line); a stream that
    does not exist is reported as such with exit code 0."""
    result = await invoke("--json", "status", stream, "--watch", "0.1", "--iterations", "2")
    assert result.exit_code == 0
    reports = [json.loads(line) for line in result.stdout.splitlines()]
    assert len(reports) == 2 and all(r["exists"] is False for r in reports)
    result = await invoke("status", stream, "--watch", "0.1", "--iterations", "2")
    assert result.exit_code == 0 and result.stdout.count("does not exist") == 2


# -- pending -------------------------------------------------------------------------


async def test_pending_lists_entries_per_consumer(redis: Redis, stream: str) -> None:
    """Pending entries show id, consumer, idle ms and deliveries, oldest first; --consumer
    filters and --count bounds the list but not the total."""
    ids = await backlog(redis, stream, total=4, held={"c1": 2, "c2": 1})
    code, report = await invoke_json("pending", stream, GROUP)
    assert code == 0 and report["total"] == 3
    entries = report["entries"]
    assert [(e["id"], e["consumer"], e["delivery_count"]) for e in entries] == [
        (ids[0], "c1", 1),
        (ids[1], "c1", 1),
        (ids[2], "c2", 1),
    ]
    assert all(0 <= e["idle_ms"] < 60_000 for e in entries)
    code, report = await invoke_json("pending", stream, GROUP, "--consumer", "c2")
    assert (report["total"], [e["id"] for e in report["entries"]]) == (1, [ids[2]])
    code, report = await invoke_json("pending", stream, GROUP, "--count", "1")
    assert (report["total"], len(report["entries"])) == (3, 1)

    result = await invoke("pending", stream, GROUP)
    assert result.exit_code == 0 and "3 pending" in result.stdout
    cells = row(result.stdout, ids[2])
    assert (cells[1], cells[4]) == ("c2", "1")


# -- dead letters --------------------------------------------------------------------


async def test_dead_letters_list_and_show(redis: Redis, stream: str) -> None:
    """The list gives reason, original id and deliveries of each dead letter; show gives
    the original fields, as text when UTF-8 and base64 otherwise."""
    dead = await dead_letter_two(redis, stream)
    code, listing = await invoke_json("dead-letters", "list", stream)
    assert code == 0 and listing["total"] == 2
    assert [
        (e["id"], e["original_id"], e["reason"], e["deliveries"]) for e in listing["entries"]
    ] == [
        (dead.letter_ids[0], dead.poison_id, "undecodable", 1),
        (dead.letter_ids[1], dead.failed_id, "max_deliveries", 2),
    ]
    code, listing = await invoke_json("dead-letters", "list", stream, "--count", "1")
    assert (listing["total"], len(listing["entries"])) == (2, 1)
    result = await invoke("dead-letters", "list", stream)
    assert row(result.stdout, dead.letter_ids[1])[1:4] == [dead.failed_id, "max_deliveries", "2"]

    code, poison = await invoke_json("dead-letters", "show", stream, dead.letter_ids[0])
    assert code == 0 and poison["original_stream"] == stream and poison["group"] == GROUP
    assert poison["fields"] == [
        {"name": "data", "value": base64.b64encode(POISON[b"data"]).decode(), "encoding": "base64"},
        {"name": "trace", "value": "t-1", "encoding": "utf-8"},
    ]
    result = await invoke("dead-letters", "show", stream, dead.letter_ids[1])
    assert result.exit_code == 0
    assert row(result.stdout, "data") == ["data", '{"n":1}']
    assert row(result.stdout, "idempotency_key") == ["idempotency_key", "k-1"]
    assert row(result.stdout, "reason") == ["reason", "max_deliveries"]


async def test_replay_changes_nothing_without_yes(redis: Redis, stream: str) -> None:
    """Without --yes, replay lists what it would do, exits 1 and changes nothing."""
    dead = await dead_letter_two(redis, stream)
    result = await invoke("dead-letters", "replay", stream, "--all")
    assert result.exit_code == 1 and "would replay 2 dead letters" in result.stdout
    code, plan = await invoke_json("dead-letters", "replay", stream, dead.letter_ids[1])
    assert code == 1 and plan["dry_run"] is True
    assert plan["entries"] == [{"id": dead.letter_ids[1], "stream": stream}]
    assert (await redis.xlen(stream), await redis.xlen(dead_letter_key(stream))) == (2, 2)


async def test_replay_with_yes_re_adds_the_original_fields(redis: Redis, stream: str) -> None:
    """With --yes, replay re-adds the original fields to the stream, where a consumer
    gets the message again, and deletes the dead letters."""
    dead = await dead_letter_two(redis, stream)
    code, done = await invoke_json("dead-letters", "replay", stream, dead.letter_ids[1], "--yes")
    assert code == 0 and done["dry_run"] is False
    [entry] = done["entries"]
    assert (entry["id"], entry["stream"]) == (dead.letter_ids[1], stream)
    [(new_id, fields)] = await entries(redis, stream, entry["new_id"])
    assert fields == {b"data": b'{"n":1}', b"idempotency_key": b"k-1"}
    assert await entry_ids(redis, dead_letter_key(stream)) == dead.letter_ids[:1]
    message = await consumer(redis, stream, "c3").next(block_ms=10)
    assert message is not None and message.id == new_id and message.payload == {"n": 1}

    result = await invoke("dead-letters", "replay", stream, "--all", "--yes")
    assert result.exit_code == 0 and "replayed 1 dead letter" in result.stdout
    assert [fields for _, fields in await entries(redis, stream, "(" + new_id)] == [POISON]
    assert await redis.xlen(dead_letter_key(stream)) == 0


async def test_replay_skips_tombstones_and_foreign_entries(redis: Redis, stream: str) -> None:
    """Replay leaves alone a tombstone (an entry deleted while pending) and an entry
    without dead-letter metadata: they are reported as skipped and not re-added."""
    [entry_id] = await backlog(redis, stream, total=1, held={"c1": 1})
    await redis.xdel(stream, entry_id)
    assert await consumer(redis, stream, "c2").claim_stale(min_idle_ms=0) == []
    [tombstone] = await entry_ids(redis, dead_letter_key(stream))
    foreign = cast(bytes, await redis.xadd(dead_letter_key(stream), {"foo": "bar"})).decode()
    code, done = await invoke_json("dead-letters", "replay", stream, "--all", "--yes")
    assert code == 0 and (done["entries"], done["skipped"]) == ([], [tombstone, foreign])
    assert await redis.xlen(stream) == 0 and await redis.xlen(dead_letter_key(stream)) == 2
    code, listing = await invoke_json("dead-letters", "list", stream)
    assert [(e["reason"], e["original_id"]) for e in listing["entries"]] == [
        ("deleted", entry_id),
        (None, None),
    ]


async def test_purge_changes_nothing_without_yes_and_deletes_with_it(
    redis: Redis, stream: str
) -> None:
    """Without --yes, purge exits 1 and deletes nothing; with --yes it deletes exactly
    the dead letters named (or all), never the stream's own entries."""
    dead = await dead_letter_two(redis, stream)
    result = await invoke("dead-letters", "purge", stream, "--all")
    assert result.exit_code == 1 and "would purge 2 dead letters" in result.stdout
    assert await redis.xlen(dead_letter_key(stream)) == 2

    code, done = await invoke_json("dead-letters", "purge", stream, dead.letter_ids[0], "--yes")
    assert code == 0 and done["entries"] == [{"id": dead.letter_ids[0], "reason": "undecodable"}]
    assert await entry_ids(redis, dead_letter_key(stream)) == dead.letter_ids[1:]
    result = await invoke("dead-letters", "purge", stream, "--all", "--yes")
    assert result.exit_code == 0 and "purged 1 dead letter" in result.stdout
    assert (await redis.xlen(dead_letter_key(stream)), await redis.xlen(stream)) == (0, 2)
    result = await invoke("dead-letters", "purge", stream, "--all")
    assert result.exit_code == 0 and "nothing to purge" in result.stdout


# -- outbox --------------------------------------------------------------------------


async def test_outbox_status_counts_pending_and_sent(
    mysql_engine: AsyncEngine, unique_name: Callable[[str], str]
) -> None:
    """Outbox status counts pending and sent rows and the oldest pending age; a
    threshold over the pending count exits 1."""
    outbox = Outbox(unique_name("test_cli_outbox"))
    await outbox.create_table(mysql_engine)
    try:
        async with DbSession(mysql_engine, registry=None) as session:
            ids = [await outbox.add(session, "orders", {"n": n}) for n in range(3)]
            await session.execute(
                f"UPDATE `{outbox.name}` SET sent_at = created_at WHERE id = :id", {"id": ids[0]}
            )
        code, state = await invoke_json("outbox", "status", "--table", outbox.name)
        assert code == 0
        assert (state["table"], state["pending"], state["sent"]) == (outbox.name, 2, 1)
        assert 0 <= state["oldest_pending_age_s"] < 60
        result = await invoke("outbox", "status", "--table", outbox.name, "--max-pending", "1")
        assert result.exit_code == 1 and "pending 2 > 1" in result.stdout
        assert row(result.stdout, "pending") == ["pending", "2"]
    finally:
        async with DbSession(mysql_engine, registry=None) as session:
            await session.execute(f"DROP TABLE IF EXISTS `{outbox.name}`")


@pytest.mark.parametrize("database_url", [DATABASE_URL, POSTGRES_URL], ids=["mysql", "postgresql"])
async def test_outbox_status_without_the_table_says_how_to_create_it(
    database_url: str, unique_name: Callable[[str], str]
) -> None:
    """On a reachable database without the outbox table, outbox status exits 4 (not 3,
    "unreachable") with one line naming the table and how to create it."""
    table = unique_name("test_cli_no_outbox")
    result = await invoke("--database", database_url, "outbox", "status", "--table", table)
    assert_one_line_error(result, 4, f"the outbox table {table!r} does not exist")
    assert f"Outbox({table!r}).create_table(engine)" in result.stderr
    assert "create_sql" in result.stderr and "1146" not in result.stderr
    code, document = await invoke_json(
        "--database", database_url, "outbox", "status", "--table", table
    )
    assert code == 4
    assert f"the outbox table {table!r} does not exist" in document["error"]


# -- help ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "command", [[], ["status"], ["dead-letters", "replay"], ["outbox", "status"]]
)
def test_help_shows_flags_without_a_value_type(command: list[str]) -> None:
    """--json, --all, --yes and --help take no value, and --help shows none for them
    (no `<bool>` beside them); options that take one keep their metavar."""
    result = CliRunner().invoke(app, [*command, "--help"], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    assert "<bool>" not in result.output
    flags = {"--help"} | ({"--json"} if not command else set())
    flags |= {"--all", "--yes"} if command == ["dead-letters", "replay"] else set()
    for flag in flags:
        line = next(line for line in result.output.splitlines() if f" {flag} " in line)
        assert re.search(rf"{flag}\s+[A-Z][a-z]", line), line  # the help text comes next
    if not command:
        assert re.search(r"--redis\s+URL\s+Redis URL", result.output)


# -- errors --------------------------------------------------------------------------


def assert_one_line_error(result: Result, code: int, text: str) -> None:
    """The command failed with ``code`` and a single stderr line containing ``text``."""
    assert result.exit_code == code, result.output
    assert result.stderr.startswith("error: ") and result.stderr.count("\n") == 1
    assert text in result.stderr and "Traceback" not in result.output


async def test_errors_are_one_line_with_an_exit_code(stream: str) -> None:
    """Unreachable servers exit 3, bad URLs and arguments 2, missing things 1, each with
    one line on stderr (and {"error": ...} as the JSON document with --json)."""
    result = await invoke("--redis", UNREACHABLE_REDIS, "status", stream)
    assert_one_line_error(result, 3, "Redis unreachable")
    result = await invoke("--json", "--redis", UNREACHABLE_REDIS, "streams")
    assert result.exit_code == 3 and "Redis unreachable" in json.loads(result.stdout)["error"]
    result = await invoke("--redis", "nonsense://x", "streams")
    assert_one_line_error(result, 2, "invalid Redis URL")
    result = await invoke("--database", "mysql+asyncmy://root@127.0.0.1:1/test", "outbox", "status")
    assert_one_line_error(result, 3, "MySQL error 2003")
    result = await invoke("outbox", "status", "--table", "no such table")
    assert_one_line_error(result, 2, "outbox table")
    result = await invoke("pending", stream, GROUP)
    assert_one_line_error(result, 1, "consumer group missing")
    result = await invoke("dead-letters", "show", stream, "1-1")
    assert_one_line_error(result, 1, "not in dead-letter stream")
    for args in (["purge", stream], ["purge", stream, "1-1", "--all"], ["show", stream, "x"]):
        result = await invoke("dead-letters", *args)
        assert result.exit_code == 2 and "Traceback" not in result.output
