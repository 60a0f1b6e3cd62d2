"""The transfers workload: shapes, strategies, the seeded sequence of transfers, what a
worker process is asked to run, and the retry policy every implementation follows."""

from __future__ import annotations

import collections
import json
import random
import threading
import time
from dataclasses import asdict, dataclass
from typing import NamedTuple

from ..settings import PAYLOAD_SEED

#: Accounts per shape: transfers spread over many rows, or fought over by few.
SHAPES = {"cold": 1_000, "hot": 5}
SHAPE_LABELS = {"cold": "1,000 rows", "hot": "5 hot rows"}
STRATEGIES = {
    "atomic": "atomic UPDATE",
    "row_lock": "RowLock (FOR UPDATE)",
    "occ": "occ_update",
    "advisory": "AdvisoryLock",
}
INITIAL_BALANCE = 1_000_000
MAX_AMOUNT = 100
#: Transfers each worker process runs before it says it is ready (pool connections
#: opened, statements prepared and cached); the table is reset after them.
WARM_UP_PER_WORKER = 2

# The retry policy of every implementation: a new transaction after a pause drawn from
# [0, min(MAX_DELAY, BASE_DELAY * 2**(attempt - 1))] ("full jitter", retry_transaction's
# formula and defaults), bounds generous enough that every transfer completes.
MAX_ATTEMPTS = 1_000
MAX_ELAPSED = 300.0
BASE_DELAY = 0.005
MAX_DELAY = 1.0


class Transfer(NamedTuple):
    """Move money between two accounts; ``low < high`` is the order locks are taken in,
    ``delta`` is what the ``low`` account gains (``high`` gains ``-delta``)."""

    low: int
    high: int
    delta: int


def transfers(accounts: int, count: int, salt: int = 0) -> list[Transfer]:
    """``count`` transfers between distinct random accounts of ``1..accounts`` with
    amounts in ``1..MAX_AMOUNT``; the same list for the same arguments in every process."""
    rng = random.Random(PAYLOAD_SEED + 7_919 * accounts + salt)
    found = []
    for _ in range(count):
        source, target = rng.sample(range(1, accounts + 1), 2)
        amount = rng.randint(1, MAX_AMOUNT)
        low, high = min(source, target), max(source, target)
        found.append(Transfer(low, high, amount if low == target else -amount))
    return found


def warm_up_transfers(spec: CellSpec) -> list[Transfer]:
    """The warm-up transfers of a worker (a sequence of their own)."""
    return transfers(spec.accounts, WARM_UP_PER_WORKER * spec.workers, salt=1)


@dataclass(frozen=True, slots=True)
class CellSpec:
    """One run of one implementation: what ``python -m bench.primitives.worker`` does."""

    backend: str  # "mariadb" or "postgresql"
    implementation: str  # "safesync", "raw" or "seed"
    strategy: str  # a key of STRATEGIES
    accounts: int  # a value of SHAPES
    ops: int
    workers: int
    table: str
    database_url: str

    @property
    def name(self) -> str:
        return f"{self.implementation} {self.strategy} on {self.accounts} accounts"

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> CellSpec:
        return cls(**json.loads(text))


class VersionConflict(Exception):
    """An OCC write matched no row (raw and seed implementations)."""


class RetryExhausted(Exception):
    """A transfer failed MAX_ATTEMPTS times or for MAX_ELAPSED seconds."""


class RetryPolicy:
    """Counts retries by reason and says how long to pause before the next attempt
    (safe to share between threads)."""

    def __init__(self) -> None:
        self.counts: collections.Counter[str] = collections.Counter()
        self._lock = threading.Lock()

    def deadline(self) -> float:
        return time.monotonic() + MAX_ELAPSED

    def pause(self, reason: str, attempt: int, deadline: float) -> float:
        """The pause after failed attempt ``attempt`` (from 1) for ``reason``; raises
        :class:`RetryExhausted` when no attempt is left."""
        delay = random.uniform(0, min(MAX_DELAY, BASE_DELAY * 2 ** (attempt - 1)))
        if attempt >= MAX_ATTEMPTS or time.monotonic() + delay > deadline:
            raise RetryExhausted(f"gave up after {attempt} attempts, last: {reason}")
        with self._lock:
            self.counts[reason] += 1
        return delay
