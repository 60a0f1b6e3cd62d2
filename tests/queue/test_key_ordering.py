"""Key-ordered processing on an in-memory stream: one message of a key at a time, in id
order, keys concurrently; failures retried in place while the key waits; dead letters
with the local attempt count; outages that spend nothing; start-up, claims, hand-back,
a hot key among cold ones; and the configuration and producer side of the option."""

from __future__ import annotations

import asyncio
import collections
import contextlib
import itertools
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
from redis.asyncio import Redis

from safesync_async import (
    ConfigurationError,
    DatabaseUnavailableError,
    JsonCodec,
    MessageDecodeError,
    QueueConfig,
    QueueConnectionError,
    QueueConsumer,
    QueueError,
    QueueMessage,
    QueueProducer,
    parse_dead_letter,
)
from safesync_async.queue._backoff import Backoff
from safesync_async.queue._failures import Outcome
from safesync_async.queue._ordering import KeyedDispatch
from safesync_async.queue._outages import DatabaseOutage
from safesync_async.queue._streams import Delivery
from safesync_async.queue.readiness import ConsumerReadiness

from .fake_stream import FakeGroup

Handler = Callable[[QueueMessage[Any]], Awaitable[None]]


@pytest.fixture
def group() -> FakeGroup:
    """An in-memory stream ``s`` with group ``g`` (created by the consumer)."""
    return FakeGroup()


def _add(group: FakeGroup, key: str | None, n: int) -> str:
    """XADD ``{"key": key, "n": n}`` with ``key`` as the entry's ordering key."""
    fields = JsonCodec().encode({"key": key, "n": n})
    if key is not None:
        fields[b"ordering_key"] = key.encode()
    return group.add(fields=fields)


def _consumer(group: FakeGroup, name: str = "c", **overrides: Any) -> QueueConsumer:
    settings: dict[str, Any] = {
        "stream_key": group.stream,
        "consumer_group": group.group,
        "consumer_name": name,
        "block_ms": 10_000,
        "claim_min_idle_ms": 1_000,
        "claim_interval_ms": 1,
        "reconnect_initial_delay": 0.001,
        "reconnect_max_delay": 0.002,
        "ordering": "key",
        "ordering_retry_delay": 0.001,
        "ordering_retry_max_delay": 0.002,
        "concurrency": 8,
    }
    settings.update(overrides)
    return QueueConsumer(
        Redis(), QueueConfig(**settings), registry=None, stream_operations=group.consumer(name)
    )


@contextlib.asynccontextmanager
async def _running(consumer: QueueConsumer, handler: Handler) -> AsyncIterator[asyncio.Task[None]]:
    """Run the consumer for the block, then stop it and re-raise what run() raised."""
    task = asyncio.create_task(consumer.run(handler))
    try:
        yield task
    finally:
        consumer.stop()
        async with asyncio.timeout(10):
            await task


class _Tracker:
    """Records starts and finishes per key: the order, and how many ran at once."""

    def __init__(self) -> None:
        self.done: dict[str, list[int]] = collections.defaultdict(list)
        self.running: collections.Counter[str] = collections.Counter()
        self.most_per_key = 0
        self.total = 0
        self.most_overall = 0

    @contextlib.contextmanager
    def handling(self, message: QueueMessage[Any]) -> Any:
        key = message.payload["key"]
        self.running[key] += 1
        self.total += 1
        self.most_per_key = max(self.most_per_key, self.running[key])
        self.most_overall = max(self.most_overall, self.total)
        try:
            yield
            self.done[key].append(message.payload["n"])
        finally:
            self.running[key] -= 1
            self.total -= 1


async def test_a_keys_messages_run_one_at_a_time_in_stream_order_while_keys_run_together(
    group: FakeGroup,
) -> None:
    """Five keys, 30 messages each, interleaved, with handlers that take varying time:
    each key's messages are handled in stream order and never two at once, while
    several keys are handled at the same time."""
    for n in range(30):
        for key in "abcde":
            _add(group, key, n)
    tracker = _Tracker()

    async def handler(message: QueueMessage[Any]) -> None:
        with tracker.handling(message):
            await asyncio.sleep(0.001 * (message.payload["n"] % 3))

    consumer = _consumer(group)
    await asyncio.wait_for(consumer.run_until_drained(handler, poll_interval=0.01), 10)
    assert tracker.done == {key: list(range(30)) for key in "abcde"}
    assert tracker.most_per_key == 1
    assert tracker.most_overall > 1
    assert group.pending == {}


async def test_without_the_option_the_same_messages_overlap_and_reorder(group: FakeGroup) -> None:
    """The same stream with ordering='none': messages of a key run at the same time and
    finish out of stream order (so the test above can tell the difference)."""
    for n in range(30):
        for key in "abcde":
            _add(group, key, n)
    tracker = _Tracker()

    async def handler(message: QueueMessage[Any]) -> None:
        with tracker.handling(message):
            await asyncio.sleep(0.001 * (message.payload["n"] % 3))

    consumer = _consumer(group, ordering="none")
    await asyncio.wait_for(consumer.run_until_drained(handler, poll_interval=0.01), 10)
    assert tracker.most_per_key > 1
    assert any(done != sorted(done) for done in tracker.done.values())


async def test_a_failed_message_is_retried_in_place_while_its_key_waits(group: FakeGroup) -> None:
    """a0 fails twice: it is retried by this consumer (attempts numbered 1, 2, 3 for the
    handler, never claimed, the stream's delivery count left at 1, its idle time kept
    fresh), a1 and a2 wait for it, and key b is handled meanwhile."""
    a0 = _add(group, "a", 0)
    _add(group, "a", 1)
    _add(group, "a", 2)
    for n in range(5):
        _add(group, "b", n)
    attempts: list[int] = []
    order: list[str] = []
    may_succeed = asyncio.Event()

    async def handler(message: QueueMessage[Any]) -> None:
        name = f"{message.payload['key']}{message.payload['n']}"
        if message.id == a0:
            attempts.append(message.delivery_count)
            if len(attempts) < 3:
                if len(attempts) == 2:
                    await may_succeed.wait()
                raise ValueError("not yet")
        order.append(name)

    consumer = _consumer(group, ordering_retry_delay=0.01, ordering_retry_max_delay=0.02)
    async with _running(consumer, handler):
        await group.wait_for(lambda: len(attempts) == 2)
        assert [n for n in order if n.startswith("b")] == [f"b{n}" for n in range(5)]
        assert not any(n.startswith("a") for n in order)
        assert group.pending[a0].owner == "c" and group.pending[a0].deliveries == 1
        may_succeed.set()
        await group.wait_for(lambda: len(group.acked) == 8)
    assert attempts == [1, 2, 3]
    assert [n for n in order if n.startswith("a")] == ["a0", "a1", "a2"]
    assert consumer.statistics().claimed == 0
    assert group.released == [] and group.dead_letters == []


async def test_after_max_deliveries_attempts_it_is_dead_lettered_and_the_key_moves_on(
    group: FakeGroup,
) -> None:
    """a0 always fails, with max_deliveries=3: after three local attempts it goes to the
    dead letters saying 3 deliveries (the stream counted 1), then a1 is handled."""
    a0 = _add(group, "a", 0)
    _add(group, "a", 1)
    seen: list[tuple[int, int]] = []

    async def handler(message: QueueMessage[Any]) -> None:
        seen.append((message.payload["n"], message.delivery_count))
        if message.id == a0:
            raise ValueError("poison")

    consumer = _consumer(group, max_deliveries=3)
    async with _running(consumer, handler):
        await group.wait_for(lambda: len(group.acked) == 1)
    assert seen == [(0, 1), (0, 2), (0, 3), (1, 1)]
    [(entry_id, fields)] = group.dead_letters
    letter = parse_dead_letter("1-0", fields)
    assert entry_id == a0
    assert (letter.reason.value, letter.deliveries) == ("handler_failed", 3)
    assert letter.error == "ValueError: poison"


async def test_a_database_outage_waits_without_spending_an_attempt(group: FakeGroup) -> None:
    """With max_deliveries=1, a0's handler meets a database outage twice: it is kept and
    retried no sooner than reads resume (the outage backoff, here at least 0.1 s), never
    dead-lettered; its key's next message waits, and both succeed."""
    a0 = _add(group, "a", 0)
    _add(group, "a", 1)
    seen: list[tuple[int, int]] = []
    times: list[float] = []

    async def handler(message: QueueMessage[Any]) -> None:
        seen.append((message.payload["n"], message.delivery_count))
        if message.id == a0:
            times.append(asyncio.get_running_loop().time())
            if len(seen) <= 2:
                raise DatabaseUnavailableError("the server is read-only (1290)", errno=1290)

    consumer = _consumer(
        group, max_deliveries=1, reconnect_initial_delay=0.2, reconnect_max_delay=0.4
    )
    async with _running(consumer, handler):
        await group.wait_for(lambda: len(group.acked) == 2)
    assert seen == [(0, 1), (0, 1), (0, 1), (1, 1)]
    assert min(later - earlier for earlier, later in itertools.pairwise(times)) >= 0.09
    assert group.dead_letters == []
    assert consumer.statistics().database_outages == 2
    assert not consumer.statistics().database_unavailable


async def test_own_pending_entries_come_first_at_start(group: FakeGroup) -> None:
    """Entries delivered to this consumer before it (re)started, and newer ones of the
    same keys: each key's messages are handled in stream order, the old ones first."""
    for n in range(10):
        _add(group, "ab"[n % 2], n)
    group.group_exists = True
    early = group.consumer("c")
    done: list[int] = []

    async def handler(message: QueueMessage[Any]) -> None:
        done.append(message.payload["n"])

    delivered = await early.read_new(6, None)
    assert len(delivered) == 6
    for n in range(10, 20):
        _add(group, "ab"[n % 2], n)
    consumer = _consumer(group)
    await asyncio.wait_for(consumer.run_until_drained(handler, poll_interval=0.01), 10)
    assert [n for n in done if n % 2 == 0] == list(range(0, 20, 2))
    assert [n for n in done if n % 2 == 1] == list(range(1, 20, 2))


async def test_claimed_entries_join_their_key_in_id_order(group: FakeGroup) -> None:
    """While a2 runs, a0 and a1 (left pending by a dead consumer) are claimed: they go
    ahead of a3, which was waiting; what had already started is not undone."""
    group.group_exists = True
    _add(group, "a", 0)
    _add(group, "a", 1)
    assert len(await group.consumer("dead").read_new(2, None)) == 2
    _add(group, "a", 2)
    _add(group, "a", 3)
    order: list[int] = []
    release = asyncio.Event()

    async def handler(message: QueueMessage[Any]) -> None:
        if message.payload["n"] == 2:
            await release.wait()
        order.append(message.payload["n"])

    consumer = _consumer(group)
    async with _running(consumer, handler):
        await group.wait_for(lambda: consumer.statistics().in_flight == 2)
        group.advance(1_000)  # the dead consumer's entries are now claimable
        await group.wait_for(lambda: consumer.statistics().claimed == 2)
        release.set()
        await group.wait_for(lambda: len(group.acked) == 4)
    assert order == [2, 0, 1, 3]


async def test_a_graceful_stop_hands_back_a_key_whole(group: FakeGroup) -> None:
    """At stop(), a0 waits for a retry (after one failure), a1 and a2 wait behind it and
    b1 waits behind the running b0: b0 finishes and is acked; a0, a1, a2 and b1 are all
    handed back (a0 with its one attempt recorded, the others' deliveries refunded)."""
    a0 = _add(group, "a", 0)
    later = [_add(group, "a", 1), _add(group, "a", 2)]
    b0 = _add(group, "b", 0)
    b1 = _add(group, "b", 1)
    b0_started = asyncio.Event()
    finish_b0 = asyncio.Event()
    failed = asyncio.Event()

    async def handler(message: QueueMessage[Any]) -> None:
        if message.id == a0:
            failed.set()
            raise ValueError("retry me later")
        if message.id == b0:
            b0_started.set()
            await finish_b0.wait()

    consumer = _consumer(group, ordering_retry_delay=30, ordering_retry_max_delay=30)
    task = asyncio.create_task(consumer.run(handler))
    await asyncio.wait_for(asyncio.gather(failed.wait(), b0_started.wait()), 10)
    consumer.stop()
    finish_b0.set()
    await asyncio.wait_for(task, 10)
    assert group.acked == [b0]
    assert sorted(group.handed_back) == sorted([a0, *later, b1])
    assert group.pending[a0].deliveries == 1
    assert all(group.pending[i].deliveries == 0 for i in [*later, b1])


async def test_a_slow_hot_key_holds_one_worker_and_cold_keys_keep_flowing(
    group: FakeGroup,
) -> None:
    """Half the stream is one hot key with a slow handler, the other half 100 cold keys:
    the hot key never runs twice at once, every cold message is done before the hot
    key's backlog, and the consumer never holds more than its read-ahead limit (8)."""
    for n in range(100):
        _add(group, "hot", n)
        _add(group, f"cold{n}", n)
    tracker = _Tracker()
    most_held = 0
    consumer = _consumer(group, concurrency=4, prefetch=4)

    async def handler(message: QueueMessage[Any]) -> None:
        nonlocal most_held
        most_held = max(most_held, consumer.statistics().in_flight)
        with tracker.handling(message):
            if message.payload["key"] == "hot":
                await asyncio.sleep(0.002)

    cold_done_at = 0
    hot_done_at = 0

    async def watch() -> None:
        nonlocal cold_done_at, hot_done_at
        step = 0
        while not hot_done_at:
            step += 1
            if not cold_done_at and sum(1 for k in tracker.done if k != "hot") == 100:
                cold_done_at = step
            if len(tracker.done["hot"]) == 100:
                hot_done_at = step
            await asyncio.sleep(0)

    watcher = asyncio.create_task(watch())
    await asyncio.wait_for(consumer.run_until_drained(handler, poll_interval=0.01), 20)
    await asyncio.wait_for(watcher, 5)
    assert tracker.done["hot"] == list(range(100))
    assert tracker.most_per_key == 1
    assert 0 < cold_done_at < hot_done_at
    assert most_held <= 8


async def test_keys_take_turns(group: FakeGroup) -> None:
    """With one worker, a key goes to the back of the line after each message: the five
    cold keys read with the hot key's backlog are handled after its first message, not
    after its tenth."""
    for n in range(10):
        _add(group, "hot", n)
    for n in range(5):
        _add(group, f"cold{n}", n)
    order: list[str] = []

    async def handler(message: QueueMessage[Any]) -> None:
        order.append(f"{message.payload['key']}:{message.payload['n']}")

    consumer = _consumer(group, concurrency=1, prefetch=15)
    await asyncio.wait_for(consumer.run_until_drained(handler, poll_interval=0.01), 10)
    assert order[:6] == ["hot:0", *(f"cold{n}:{n}" for n in range(5))]


async def test_reading_goes_on_when_everything_held_waits_behind_its_key(
    group: FakeGroup,
) -> None:
    """The read-ahead (8) is full of one key's messages and one slot frees: the consumer
    reads on at once (instead of waiting for a quarter of the read-ahead to free up),
    so a cold message is handled while the hot key's next message still runs."""
    for n in range(8):
        _add(group, "hot", n)
    _add(group, "cold", 0)
    release: dict[int, asyncio.Event] = collections.defaultdict(asyncio.Event)
    started: list[int] = []
    cold_done = asyncio.Event()

    async def handler(message: QueueMessage[Any]) -> None:
        if message.payload["key"] == "cold":
            cold_done.set()
            return
        started.append(message.payload["n"])
        await release[message.payload["n"]].wait()

    consumer = _consumer(group, concurrency=2, prefetch=6)
    async with _running(consumer, handler):
        await group.wait_for(lambda: started == [0] and consumer.statistics().in_flight == 8)
        release[0].set()
        await group.wait_for(lambda: started == [0, 1])
        await asyncio.wait_for(cold_done.wait(), 5)
        assert started == [0, 1]
        for event in [release[n] for n in range(1, 8)]:
            event.set()
        await group.wait_for(lambda: len(group.acked) == 9)


async def test_a_batch_keeps_key_order_and_stops_a_key_at_its_failure(group: FakeGroup) -> None:
    """batch_size=4 without an engine (one worker runs a batch's messages in turn): when
    a0 fails, a1 and a2 taken in the same batch are not run until a0 succeeds on its
    retry."""
    a0 = _add(group, "a", 0)
    _add(group, "a", 1)
    _add(group, "a", 2)
    order: list[str] = []
    failures = 0

    async def handler(message: QueueMessage[Any]) -> None:
        nonlocal failures
        if message.id == a0 and failures == 0:
            failures += 1
            order.append("a0 failed")
            raise ValueError("once")
        order.append(f"a{message.payload['n']}")

    consumer = _consumer(group, concurrency=1, batch_size=4)
    await asyncio.wait_for(consumer.run_until_drained(handler, poll_interval=0.01), 10)
    assert order == ["a0 failed", "a0", "a1", "a2"]


async def test_a_retrying_key_does_not_hold_up_other_keys(group: FakeGroup) -> None:
    """While a0 waits 0.3 s for its retry, fifty messages of other keys are handled."""
    a0 = _add(group, "a", 0)
    for n in range(50):
        _add(group, f"k{n}", n)
    attempts = 0
    others_done_before_retry = 0
    done = 0

    async def handler(message: QueueMessage[Any]) -> None:
        nonlocal attempts, others_done_before_retry, done
        if message.id == a0:
            attempts += 1
            if attempts == 1:
                raise ValueError("once")
            others_done_before_retry = done
            return
        done += 1

    consumer = _consumer(group, ordering_retry_delay=0.3, ordering_retry_max_delay=0.3)
    await asyncio.wait_for(consumer.run_until_drained(handler, poll_interval=0.01), 10)
    assert attempts == 2
    assert others_done_before_retry == 50


async def test_messages_without_a_key_have_no_ordering_constraint(group: FakeGroup) -> None:
    """Keyless messages run concurrently even under key ordering, and a failed one is
    left for recovery as in unordered mode (claimed again after claim_min_idle_ms)."""
    ids = [_add(group, None, n) for n in range(8)]
    running = 0
    most = 0
    gate = asyncio.Event()
    attempts: collections.Counter[str] = collections.Counter()

    async def handler(message: QueueMessage[Any]) -> None:
        nonlocal running, most
        attempts[message.id] += 1
        running += 1
        most = max(most, running)
        try:
            if running == 8:
                gate.set()
            await asyncio.wait_for(gate.wait(), 5)
            if message.id == ids[0] and attempts[message.id] == 1:
                raise ValueError("once")
        finally:
            running -= 1

    consumer = _consumer(group)
    async with _running(consumer, handler):
        await group.wait_for(lambda: len(group.acked) == 7)
        assert group.pending[ids[0]].deliveries == 1
        group.advance(1_000)
        await group.wait_for(lambda: len(group.acked) == 8)
    assert most == 8
    assert attempts[ids[0]] == 2 and consumer.statistics().claimed == 1


async def test_a_key_function_orders_by_what_it_returns(group: FakeGroup) -> None:
    """ordering_key=lambda m: m.payload["account"]: messages of one account run in
    order, the handler sees the key as bytes, and an entry the function refuses with
    MessageDecodeError is dead-lettered as undecodable."""
    codec = JsonCodec()
    for n in range(20):
        group.add(fields=codec.encode({"account": f"acc{n % 2}", "n": n}))
    refused = group.add(fields=codec.encode({"n": 99}))
    done: dict[bytes | None, list[int]] = collections.defaultdict(list)

    def account(message: QueueMessage[Any]) -> str:
        if "account" not in message.payload:
            raise MessageDecodeError("no account")
        return str(message.payload["account"])

    async def handler(message: QueueMessage[Any]) -> None:
        await asyncio.sleep(0.001 * (message.payload["n"] % 3))
        done[message.ordering_key].append(message.payload["n"])

    consumer = _consumer(group, ordering_key=account)
    await asyncio.wait_for(consumer.run_until_drained(handler, poll_interval=0.01), 10)
    assert done == {b"acc0": list(range(0, 20, 2)), b"acc1": list(range(1, 20, 2))}
    [(entry_id, fields)] = group.dead_letters
    letter = parse_dead_letter("1-0", fields)
    assert entry_id == refused
    assert (letter.reason.value, letter.error) == ("undecodable", "ordering_key: no account")


async def test_a_key_function_bug_stops_the_consumer_with_one_error(group: FakeGroup) -> None:
    """A key function that raises something else (a bug) stops run() with a QueueError
    caused by it, as a codec bug does, instead of handling the message unordered."""
    group.add({"n": 1})

    def broken(message: QueueMessage[Any]) -> str:
        raise KeyError("account")

    async def handler(message: QueueMessage[Any]) -> None:
        raise AssertionError("must not be handled")

    consumer = _consumer(group, ordering_key=broken)
    with pytest.raises(QueueError) as raised:
        await asyncio.wait_for(consumer.run(handler), 10)
    assert isinstance(raised.value.__cause__, KeyError)


def test_the_options_are_checked() -> None:
    """An unknown ordering, a key function without ordering='key' (which would order
    nothing) and a max retry delay below the first are configuration errors."""
    base: dict[str, Any] = {"stream_key": "s", "consumer_group": "g"}
    with pytest.raises(ConfigurationError, match="ordering must be"):
        QueueConfig(**base, ordering="partition")  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError, match="ordering='key'"):
        QueueConfig(**base, ordering_key=lambda m: "k")
    with pytest.raises(ConfigurationError, match="ordering_retry_max_delay"):
        QueueConfig(**base, ordering="key", ordering_retry_delay=2, ordering_retry_max_delay=1)
    assert QueueConfig(**base).ordering == "none"


async def test_the_producer_writes_the_key_field_and_checks_keys() -> None:
    """publish(key=...) and publish_batch(keys=...) store the key in the entry field
    ordering_key (str as UTF-8, bytes as is, None: no field); empty keys, keys that are
    not text or bytes and a keys list of the wrong length are refused."""
    producer = QueueProducer(Redis(), "s", trace_context=False, registry=None)
    assert producer.fields_for({"n": 1}, key="acc-7")[b"ordering_key"] == b"acc-7"
    assert producer.fields_for({"n": 1}, key=b"\x00\xff")[b"ordering_key"] == b"\x00\xff"
    assert b"ordering_key" not in producer.fields_for({"n": 1})
    for bad in ("", b"", 7):
        with pytest.raises(ConfigurationError):
            producer.fields_for({"n": 1}, key=bad)  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError, match="one key"):
        await producer.publish_batch([{"n": 1}, {"n": 2}], keys=["a"])


async def test_a_reconnect_does_not_take_back_entries_waiting_for_their_ack(
    group: FakeGroup,
) -> None:
    """Three messages committed while XACK keeps failing; then the read connection drops
    and the consumer re-reads its own pending entries: the three are not handled again
    (an old message of a key must not come back after newer ones), and are acked once
    Redis takes the XACK."""
    ids = [_add(group, "a", n) for n in range(3)]
    group.fail_next("ack", *(QueueConnectionError("XACK: connection lost") for _ in range(100)))
    handled: collections.Counter[str] = collections.Counter()

    async def handler(message: QueueMessage[Any]) -> None:
        handled[message.id] += 1

    consumer = _consumer(group)
    async with _running(consumer, handler):
        await group.wait_for(lambda: sum(handled.values()) == 3)
        group.fail_next("read_new", QueueConnectionError("XREADGROUP: connection lost"))
        group.changed()  # wakes the blocking read, which then fails
        await group.wait_for(lambda: sorted(group.acked) == sorted(ids))
    assert handled == dict.fromkeys(ids, 1)


async def test_many_distinct_keys_are_forgotten_once_done() -> None:
    """10,000 messages with 10,000 different keys pass through the key-ordered dispatch
    64 at a time: it never tracks more keys than messages held, and none at the end."""
    config = QueueConfig(stream_key="s", consumer_group="g", ordering="key")
    dispatch = KeyedDispatch(config, DatabaseOutage(Backoff(0.1, 1.0), ConsumerReadiness()))
    most = 0
    for start in range(0, 10_000, 64):
        batch = [
            Delivery(f"1-{n}", {b"data": b"{}", b"ordering_key": f"k{n}".encode()}, 1)
            for n in range(start, min(start + 64, 10_000))
        ]
        for delivery in batch:
            dispatch.put(delivery)
        most = max(most, dispatch.keys_tracked)
        taken = [await dispatch.get() for _ in batch]
        assert taken == batch
        dispatch.settle(batch, [Outcome.DONE] * len(batch))
    assert most == 64
    assert dispatch.keys_tracked == 0
