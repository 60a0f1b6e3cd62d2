"""Bad inputs: poison entries, entries trimmed while pending, failing and hanging handlers
mixed into good traffic; identifier injection attempts; abusive lock keys. Every bad
input is dead-lettered, reported or rejected with the right reason, every good message
is applied once, and nothing reaches SQL that should not."""

from __future__ import annotations

import asyncio
import json
import unicodedata
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from redis.asyncio import Redis
from sqlalchemy import event
from sqlalchemy.ext.asyncio import AsyncEngine

from safesync_async import (
    AdvisoryLock,
    DbSession,
    Inbox,
    InvalidIdentifierError,
    LockTimeoutError,
    Outbox,
    QueueConsumer,
    QueueMessage,
    QueueProducer,
    RowLock,
    lock_name,
    occ_update,
)

from ..conftest import TableFactory
from ..support.backends import MARIADB
from ..support.checker import add_entry, dead_letters, message_key
from ..support.reliability import Recorder
from .conftest import effect_handler, queue_config, running, wait_settled

pytestmark = pytest.mark.faults

FAMILY = "Bad inputs"
MAX_BYTES = 64_000


def _json(value: object) -> dict[bytes, bytes]:
    return {b"data": json.dumps(value).encode()}


# name -> (entry fields, the outcome it must have: a dead-letter reason or "applied")
POISON: dict[str, tuple[dict[bytes, bytes], str]] = {
    "invalid JSON": ({b"data": b"{oops"}, "undecodable"),
    "non-UTF-8 bytes": ({b"data": b"\xff\xfe\xfd"}, "undecodable"),
    "no data field": ({b"body": b"{}"}, "undecodable"),
    "empty data": ({b"data": b""}, "undecodable"),
    "JSON nested 20,000 deep": ({b"data": b"[" * 20_000 + b"]" * 20_000}, "undecodable"),
    "payload over max_message_bytes": (_json({"n": 1, "blob": "x" * 200_000}), "too_large"),
    "many fields over max_message_bytes": (
        {f"f{i}".encode(): b"y" * 1_000 for i in range(100)},
        "too_large",
    ),
    "missing field n": (_json({"m": 1}), "handler_failed"),
    "mistyped field n (text in INT)": (_json({"n": "seven"}), "handler_failed"),
    "JSON array instead of object": (_json([1, 2, 3]), "handler_failed"),
    "JSON null": (_json(None), "handler_failed"),
    "always-failing handler": (_json({"n": 5, "fail": True}), "handler_failed"),
    "hanging handler (handler_timeout)": (_json({"n": 6, "hang": True}), "handler_failed"),
    "hostile idempotency key (NUL, quotes, 2 KB)": (
        {**_json({"n": 7}), b"idempotency_key": b"k\x00'; DROP TABLE x; --" + "é".encode() * 1_000},
        "applied",
    ),
}


async def _trimmed_while_pending(redis: Redis, stream: str) -> list[str]:
    """Three entries read by a consumer that then dies, trimmed away while pending."""
    await redis.xgroup_create(stream, "g", id="0", mkstream=True)
    producer = QueueProducer(redis, stream, registry=None)
    doomed = await producer.publish_batch({"n": 1_000 + i} for i in range(3))
    await redis.xreadgroup("g", "crashed", {stream: ">"}, count=3)
    keep = await producer.publish({"n": 999})
    assert await redis.xtrim(stream, minid=keep, approximate=False) == 3
    return doomed


@pytest.mark.parametrize(
    "good", [pytest.param(200, id="fast"), pytest.param(3_000, id="long", marks=pytest.mark.slow)]
)
async def test_bad_inputs_mixed_into_good_traffic(
    engine: AsyncEngine,
    redis: Redis,
    stream: str,
    effects: str,
    inbox: Inbox,
    reliability: Recorder,
    good: int,
) -> None:
    """Poison entries (undecodable, oversized, mistyped, failing, hanging) and entries trimmed
    while pending, mixed into good traffic: each bad input is dead-lettered or reported
    with its own reason, every good message is applied exactly once, and the consumer loop
    keeps running throughout."""
    doomed = await _trimmed_while_pending(redis, stream)
    producer = QueueProducer(redis, stream, registry=None)
    expected: dict[str, str] = {f"id:{i}": "deleted" for i in doomed}
    names: dict[str, str] = {f"id:{i}": "trimmed while pending" for i in doomed}
    good_keys = [f"id:{await producer.publish({'n': 999})}"]  # the entry kept by the trim
    per_gap = max(1, good // (len(POISON) + 1))
    for name, (fields, outcome) in POISON.items():
        ids = await producer.publish_batch({"n": n} for n in range(per_gap))
        good_keys += [f"id:{i}" for i in ids]
        entry_id = await add_entry(redis, stream, fields)
        key = message_key(stream, "g", entry_id, fields)
        expected[key], names[key] = outcome, name
    good_keys += [f"id:{i}" for i in await producer.publish_batch({"n": n} for n in range(per_gap))]

    async def misbehave(message: QueueMessage[Any], session: DbSession) -> None:
        payload = message.payload
        if isinstance(payload, dict) and payload.get("fail"):
            raise RuntimeError("this handler always fails for this message")
        if isinstance(payload, dict) and payload.get("hang"):
            await asyncio.sleep(3_600)

    config = queue_config(
        stream,
        concurrency=4,
        max_deliveries=2,
        max_message_bytes=MAX_BYTES,
        handler_timeout=0.3,
        claim_min_idle_ms=1_000,  # far above the handler timeout, even on a loaded machine
    )
    consumer = QueueConsumer(redis, config, inbox=inbox, registry=None)
    sent = good_keys + list(expected)
    async with running(consumer, effect_handler(effects, misbehave), engine=engine) as task:
        counts = await wait_settled(redis, engine, stream, effects, sent, timeout=90)
        loop_stopped = task.done()
    outcomes = {
        message_key(stream, "g", letter.original_id, letter.fields): letter.reason.value
        for letter in await dead_letters(redis, stream)
    }
    async with DbSession(engine, registry=None) as session:
        rows = await session.fetch_all(
            f"SELECT message_key, COUNT(*) AS n FROM `{effects}` GROUP BY message_key"
        )
    applied = {str(r["message_key"]): int(r["n"]) for r in rows}
    for key in applied:
        outcomes.setdefault(key, "applied")
    wrong = {
        names[k]: (want, outcomes.get(k)) for k, want in expected.items() if outcomes.get(k) != want
    }
    good_once = sum(1 for k in good_keys if applied.get(k) == 1)
    reliability.record(
        FAMILY,
        f"poison, trimmed, failing and hanging entries in {len(good_keys)} good messages",
        bad_inputs=len(expected),
        handled_as_expected=len(expected) - len(wrong),
        good_messages=len(good_keys),
        good_applied_once=good_once,
        dead_lettered=counts.dead_lettered_total,
        reported_deleted=counts.reported_deleted,
        lost=counts.lost,
        duplicate_effects=counts.duplicated,
        loop_stopped=loop_stopped,
    )
    assert wrong == {}
    assert good_once == len(good_keys)
    assert (counts.lost, counts.duplicated, counts.left_pending) == (0, 0, 0), counts
    assert not loop_stopped


INJECTIONS = [
    "accounts`; DROP TABLE accounts; --",
    "accounts'",
    'accounts"',
    "accounts;",
    "acc/*x*/ounts",
    "accounts -- x",
    "accounts#",
    "`accounts`",
    "accounts)",
    "accounts,other",
    "accounts\n",
    "\naccounts",
    "ACCOUNTS\r\nDELETE FROM accounts",
    "acc\x00ounts",
    "acc ounts",
    "accounts\\",
    "%s",
    ":id",
    "?",
    "",
    "a" * 65,
    "1accounts",
    "db.accounts.x",
    ".accounts",
    "accounts.",
    "accóunts",
    "ａccounts",  # fullwidth a  # noqa: RUF001
    "accounts\u200b",
    "accounts\u202e",
    "аccounts",  # Cyrillic a  # noqa: RUF001
]

Attempt = Callable[[DbSession, str], Awaitable[object]]
TARGETS: dict[str, Attempt] = {
    "RowLock table": lambda s, bad: RowLock(s, bad, {"id": 1}).acquire(),
    "RowLock where column": lambda s, bad: RowLock(s, "accounts", {bad: 1}).acquire(),
    "RowLock columns": lambda s, bad: RowLock(s, "accounts", {"id": 1}, columns=[bad]).acquire(),
    "occ_update table": lambda s, bad: occ_update(s, bad, "id", 1, "version", 0, {"balance": 1}),
    "occ_update id column": lambda s, bad: occ_update(
        s, "accounts", bad, 1, "version", 0, {"balance": 1}
    ),
    "occ_update version column": lambda s, bad: occ_update(
        s, "accounts", "id", 1, bad, 0, {"balance": 1}
    ),
    "occ_update updated column": lambda s, bad: occ_update(
        s, "accounts", "id", 1, "version", 0, {bad: 1}
    ),
}


async def _construct(factory: Callable[[str], object], bad: str) -> object:
    return factory(bad)


async def test_identifier_injection_rejected_before_any_sql(
    engine: AsyncEngine, make_table: TableFactory, reliability: Recorder
) -> None:
    """Table and column names with quotes, backticks, semicolons, comments, newlines, NUL,
    look-alike unicode and the like are rejected with InvalidIdentifierError by every API
    that takes a name, before any SQL is sent; the session stays usable and the tables
    are intact."""
    table = await make_table("CREATE TABLE `{table}` (id INT PRIMARY KEY)")
    sent: list[str] = []

    def record(*args: object) -> None:
        sent.append(str(args[2]))

    attempts = 0
    accepted: list[tuple[str, str]] = []
    event.listen(engine.sync_engine, "before_cursor_execute", record)
    try:
        async with DbSession(engine, registry=None) as session:
            targets: dict[str, Attempt] = {
                **TARGETS,
                "Inbox table": lambda s, bad: _construct(Inbox, bad),
                "Outbox table": lambda s, bad: _construct(Outbox, bad),
            }
            for target, attempt in targets.items():
                for bad in INJECTIONS:
                    attempts += 1
                    try:
                        await attempt(session, bad)
                    except InvalidIdentifierError:
                        continue
                    accepted.append((target, bad))
            assert not session.is_rollback_only
            statements_during_attempts = len(sent)
            assert await session.execute_scalar(f"SELECT COUNT(*) FROM `{table}`") == 0
    finally:
        event.remove(engine.sync_engine, "before_cursor_execute", record)
    reliability.record(
        FAMILY,
        f"identifier injection: {len(INJECTIONS)} hostile names x {len(targets)} APIs",
        bad_inputs=attempts,
        handled_as_expected=attempts - len(accepted),
        sql_sent=statements_during_attempts,
    )
    assert accepted == []
    assert statements_during_attempts == 0


def _lock_key_groups() -> dict[str, list[str | bytes]]:
    """Keys that must all be distinct locks, by kind of abuse."""
    huge = "k" * 1_000_000
    return {
        "huge keys (1 MB, differing in the last byte)": [huge + "1", huge + "2"],
        "NUL bytes (MariaDB truncates names at NUL)": ["a\x00b", "a\x00c", "a"],
        "case variants (MySQL compares names case-insensitively)": [
            "Order:7",
            "order:7",
            "ORDER:7",
        ],
        "unicode normalisation (NFC vs NFD)": [
            unicodedata.normalize("NFC", "café"),
            unicodedata.normalize("NFD", "café"),
        ],
        "non-UTF-8 bytes": [b"\xff\x00", b"\xff\x01"],
        "trailing space": ["key", "key "],
        "64-character boundary": ["x" * 64, "x" * 65],
        "SQL in the key": [
            "'; SELECT RELEASE_ALL_LOCKS(); --",
            "'; SELECT RELEASE_ALL_LOCKS(); -- ",
        ],
        "long shared prefix": ["tenant:" + "z" * 300 + ":1", "tenant:" + "z" * 300 + ":2"],
    }


async def test_lock_key_abuse_gives_distinct_locks(
    engine: AsyncEngine, unique_name: Callable[[str], str], reliability: Recorder
) -> None:
    """Huge keys, NUL bytes, case and normalisation variants, non-UTF-8 bytes and SQL-looking
    keys each map to their own named lock: holding one never blocks a variant, the same
    key is exclusive, and nothing stays held afterwards."""
    run = unique_name("keys")
    groups = {  # suffixed with a unique run name: other runs never share these locks
        kind: [k + run if isinstance(k, str) else k + run.encode() for k in keys]
        for kind, keys in _lock_key_groups().items()
    }
    keys = [key for group in groups.values() for key in group]
    names = [lock_name(k) for k in keys]
    assert len({n.lower() for n in names}) == len(keys)
    assert all(len(n) <= 64 and n.isascii() and "\x00" not in n for n in names)
    checks = 0
    failures: list[str] = []
    async with DbSession(engine, registry=None) as holder:
        for group in groups.values():
            await AdvisoryLock(holder, group[0], timeout=0).acquire()
        async with DbSession(engine, registry=None) as other:
            for kind, group in groups.items():
                for variant in group[1:]:  # distinct: free although group[0] is held
                    checks += 1
                    try:
                        await AdvisoryLock(other, variant, timeout=0).acquire()
                    except LockTimeoutError:
                        failures.append(f"{kind}: a variant was blocked by another key")
        async with DbSession(engine, registry=None) as other:
            for kind, group in groups.items():  # the same key: exclusive
                checks += 1
                try:
                    await AdvisoryLock(other, group[0], timeout=0).acquire()
                    failures.append(f"{kind}: the same key was granted twice")
                except LockTimeoutError:
                    pass
    report = await MARIADB.pool_report(engine, tuple(keys))
    reliability.record(
        FAMILY,
        f"lock-key abuse: {len(keys)} keys in {len(groups)} kinds",
        bad_inputs=len(keys),
        handled_as_expected=checks - len(failures),
        checks=checks,
        held_named_locks_after=len(report.held_locks),
    )
    assert failures == []
    assert report.held_locks == ()
