"""The key-ordered dispatch against a model: random reads, late (claimed) older entries,
batches of up to three, and outcomes (done, failed, kept) in any order. Whatever happens,
no key ever has two messages started at once, a key's next message is always its oldest
one waiting, a failed attempt is counted, and everything ends settled with no key left."""

from __future__ import annotations

import asyncio
from collections import defaultdict

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from safesync_async import QueueConfig
from safesync_async.queue._backoff import Backoff
from safesync_async.queue._failures import Outcome
from safesync_async.queue._ordering import KeyedDispatch
from safesync_async.queue._outages import DatabaseOutage
from safesync_async.queue._streams import Delivery
from safesync_async.queue.readiness import ConsumerReadiness

KEYS = ["a", "b", "c", None]
OUTCOMES = [Outcome.DONE, Outcome.DONE, Outcome.FAILED, Outcome.KEPT]


def _order(entry_id: str) -> tuple[int, int]:
    ms, _, seq = entry_id.partition("-")
    return int(ms), int(seq)


#: (what, key of a put, whether the put is older than everything, a number, outcomes)
Step = tuple[str, str | None, bool, int, list[Outcome]]
STEPS = st.lists(
    st.tuples(
        st.sampled_from(["put", "put", "take", "settle", "wait"]),
        st.sampled_from(KEYS),
        st.booleans(),
        st.integers(0, 9),
        st.lists(st.sampled_from(OUTCOMES), min_size=3, max_size=3),
    ),
    min_size=5,
    max_size=60,
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(steps=STEPS)
async def test_the_dispatch_keeps_each_key_in_order(steps: list[Step]) -> None:
    """Random steps (puts of new or older entries, takes of batches of one to three,
    outcomes, waits for retry timers), then everything run to the end, checking the
    invariants throughout."""
    config = QueueConfig(
        stream_key="s",
        consumer_group="g",
        ordering="key",
        ordering_retry_delay=0.0005,
        ordering_retry_max_delay=0.0005,
    )
    dispatch = KeyedDispatch(config, DatabaseOutage(Backoff(0.1, 1.0), ConsumerReadiness()))
    key_of: dict[str, str | None] = {}
    open_ids: dict[str | None, set[str]] = defaultdict(set)  # put and not done, per key
    counts: dict[str, int] = {}
    running: list[list[Delivery]] = []
    sequence = 0

    def put(key: str | None, older: bool) -> None:
        nonlocal sequence
        sequence += 1
        entry_id = f"{0 if older else 1}-{sequence}"
        fields = {b"data": b"{}"} | ({b"ordering_key": key.encode()} if key else {})
        key_of[entry_id] = key
        open_ids[key].add(entry_id)
        counts[entry_id] = 1
        dispatch.put(Delivery(entry_id, fields, 1))

    def check_started(batch: list[Delivery]) -> None:
        started = {d.id for b in running for d in b}
        busy = {key_of[i] for i in started}
        for index, delivery in enumerate(batch):
            key = key_of[delivery.id]
            assert delivery.delivery_count == counts[delivery.id]
            if key is None:
                continue
            assert key not in busy  # never two messages of a key at once
            earlier = {d.id for d in batch[:index] if key_of[d.id] == key}
            waiting = open_ids[key] - started - earlier
            assert delivery.id == min(waiting, key=_order)  # the oldest one waiting
        running.append(batch)

    def settle(batch: list[Delivery], drawn: list[Outcome]) -> None:
        stopped: set[str | None] = set()
        outcomes = []
        for delivery, outcome in zip(batch, drawn, strict=True):
            key = key_of[delivery.id]
            if key is not None and key in stopped:
                outcome = Outcome.KEPT  # the processor never runs a key past its failure
            outcomes.append(outcome)
            if outcome is Outcome.DONE:
                open_ids[key].discard(delivery.id)
            else:
                stopped.add(key)
                if outcome is Outcome.FAILED:
                    counts[delivery.id] += 1
        running.remove(batch)
        dispatch.settle(batch, outcomes)
        for delivery in batch:  # without a key: left for recovery, which claims it again
            if key_of[delivery.id] is None and delivery.id in open_ids[None]:
                dispatch.put(Delivery(delivery.id, delivery.fields, counts[delivery.id]))

    async def take(size: int) -> None:
        if dispatch.empty:
            return
        first = await asyncio.wait_for(dispatch.get(), 1)  # something may start: it does
        assert first is not None
        batch = [first]
        dispatch.take_more(batch, size)
        check_started(batch)

    for what, key, older, number, outcomes in steps:
        if what == "put":
            put(key, older)
        elif what == "take":
            await take(number % 3 + 1)
        elif what == "settle" and running:
            batch = running[number % len(running)]
            settle(batch, outcomes[: len(batch)])
        elif what == "wait":
            await asyncio.sleep(0.002)  # retry timers fire

    async with asyncio.timeout(2):  # the rest runs to completion, every attempt succeeding
        while any(open_ids.values()) or running:
            for batch in list(running):
                settle(batch, [Outcome.DONE] * len(batch))
            if dispatch.empty:
                await asyncio.sleep(0.002)
            else:
                await take(3)
    assert dispatch.keys_tracked == 0
    assert not dispatch.blocked and dispatch.empty
