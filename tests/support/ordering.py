"""The ordering checker: messages carry a per-key sequence number (1, 2, 3... in publish
order), and the handler applies each with a conditional UPDATE that matches only when the
key's last applied number is the one before. A message that matches nothing arrived out
of order: a violation, recorded (key, number, what was there) and raised, so nothing is
committed for it.

The handler also misbehaves on purpose, decided per message by a seeded generator:
random delays, transient failures on the first one or two deliveries (retried), and a
database outage (``DatabaseUnavailableError``) once."""

from __future__ import annotations

import asyncio
import random
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy.ext.asyncio import AsyncEngine

from safesync_async import (
    DatabaseUnavailableError,
    DbSession,
    PartitionedProducer,
    QueueMessage,
    QueueProducer,
)

__all__ = ["KEY_STATE", "OrderViolation", "OrderingChecker", "TransientFailure", "plan"]

#: One row per key: the last sequence number applied.
KEY_STATE = "CREATE TABLE {table} (k VARCHAR(64) PRIMARY KEY, last_seq INT NOT NULL)"


class OrderViolation(Exception):
    """A message's number was not the key's next one."""


class TransientFailure(Exception):
    """A failure that goes away on a later delivery."""


def plan(messages: int, keys: int, hot_keys: int, hot_share: float, seed: int) -> list[str]:
    """The key of each message in publish order: ``hot_keys`` keys share ``hot_share`` of
    the messages, the others the rest (every key gets at least one)."""
    rng = random.Random(seed)
    hot = [f"hot{i}" for i in range(hot_keys)]
    cold = [f"cold{i}" for i in range(keys - hot_keys)]
    order = hot + cold
    while len(order) < messages:
        order.append(rng.choice(hot) if rng.random() < hot_share else rng.choice(cold))
    rng.shuffle(order)
    return order


@dataclass
class OrderingChecker:
    """Publishes a plan and checks how a consumer applied it (see the module docstring).

    ``failure_share`` of the messages fail on their first delivery (a third of those on
    their second too); ``outage_share`` meet one database outage; ``delay_share`` sleep
    up to ``max_delay`` seconds before writing."""

    engine: AsyncEngine
    table: str
    keys: list[str]
    seed: int = 7
    failure_share: float = 0.03
    outage_share: float = 0.002
    delay_share: float = 0.2
    max_delay: float = 0.003
    violations: list[tuple[str, int, int | None]] = field(default_factory=list)
    failures: int = 0
    outages: int = 0
    _fails_until: dict[int, int] = field(default_factory=dict)
    _outage_for: set[int] = field(default_factory=set)
    _rng: random.Random = field(init=False)

    def __post_init__(self) -> None:
        rng = random.Random(self.seed)
        for index in range(len(self.keys)):
            draw = rng.random()
            if draw < self.failure_share:
                self._fails_until[index] = 2 if draw < self.failure_share / 3 else 1
            elif draw < self.failure_share + self.outage_share:
                self._outage_for.add(index)
        self._rng = random.Random(self.seed + 1)

    @property
    def expected(self) -> dict[str, int]:
        """The last sequence number of each key once everything is applied."""
        return dict(Counter(self.keys))

    async def setup(self) -> None:
        """Every key starts at 0."""
        async with DbSession(self.engine, registry=None) as session:
            for key in sorted(set(self.keys)):
                await session.execute(
                    f"INSERT INTO {self.table} (k, last_seq) VALUES (:k, 0)", {"k": key}
                )

    async def publish(self, producer: QueueProducer | PartitionedProducer) -> None:
        """Message ``i`` carries its key, its number within the key, and ``i``; the key is
        also the entry's ordering key."""
        seq: Counter[str] = Counter()
        payloads = []
        for index, key in enumerate(self.keys):
            seq[key] += 1
            payloads.append({"k": key, "seq": seq[key], "i": index})
        await producer.publish_batch(payloads, keys=self.keys)

    async def handle(self, message: QueueMessage[Any], session: DbSession) -> None:
        """Apply the message's number if it is its key's next; misbehave as planned."""
        key, seq, index = message.payload["k"], message.payload["seq"], message.payload["i"]
        if self._rng.random() < self.delay_share:
            await asyncio.sleep(self._rng.uniform(0, self.max_delay))
        matched = await session.execute(
            f"UPDATE {self.table} SET last_seq = :seq WHERE k = :k AND last_seq = :previous",
            {"seq": seq, "k": key, "previous": seq - 1},
        )
        if matched == 0:
            last = await session.execute_scalar(
                f"SELECT last_seq FROM {self.table} WHERE k = :k", {"k": key}
            )
            self.violations.append((key, seq, None if last is None else int(last)))
            raise OrderViolation(f"{key}: {seq} applied after {last}")
        if message.delivery_count <= self._fails_until.get(index, 0):
            self.failures += 1
            raise TransientFailure(f"message {index}, delivery {message.delivery_count}")
        if index in self._outage_for:
            self._outage_for.discard(index)
            self.outages += 1
            raise DatabaseUnavailableError("simulated outage (1290)", errno=1290)

    async def applied(self) -> dict[str, int]:
        """The last number applied per key, from the database."""
        async with DbSession(self.engine, registry=None) as session:
            rows = await session.fetch_all(f"SELECT k, last_seq FROM {self.table}")
        return {str(row["k"]): int(row["last_seq"]) for row in rows}
