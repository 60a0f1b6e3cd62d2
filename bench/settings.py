"""Where the servers are, how big each section is, and the fixed workload parameters."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

DATABASE_URL = os.environ.get("SAFESYNC_DATABASE_URL", "mysql+asyncmy://root@127.0.0.1:3306/test")
REDIS_URL = os.environ.get("SAFESYNC_REDIS_URL", "redis://127.0.0.1:6379/0")
POSTGRES_URL = os.environ.get(
    "SAFESYNC_POSTGRES_URL", "postgresql+asyncpg://postgres@127.0.0.1:5432/test"
)

#: The repository root (worker subprocesses run ``python -m bench.worker`` from here).
REPO_ROOT = Path(__file__).resolve().parent.parent
RESULTS_DIR = Path(__file__).resolve().parent / "results"

ACCOUNTS = 1_000  # rows the consumer workload spreads its updates over
GROUP = "bench"  # consumer group of every consumer run
PAYLOAD_SEED = 20_240_611  # the generated workload is identical in every run
DRAIN_POLL_SECONDS = 0.02  # how often every variant checks whether the group is drained
PRIMITIVE_WORKERS = 32  # concurrent workers (asyncio tasks, seed threads) per primitives run
SEED_BLOCK_MS = 20  # seed consumer's XREADGROUP block: only matters once the stream is empty
# The machine is shared with the servers (and maybe with other work): before each run wait
# up to Sizes.quiet_wait_seconds for the host to be less than QUIET_HOST_BUSY busy; flag a
# run as disturbed when CPU not accounted to its workers or the servers exceeds
# DISTURBED_SHARE of the machine's capacity during the run.
QUIET_HOST_BUSY = 0.25
DISTURBED_SHARE = 0.2


@dataclass(frozen=True, slots=True)
class Sizes:
    """How much work each section does."""

    messages: int  # consumer section: messages per run
    reps: int  # interleaved repetitions of every section but memory
    primitive_ops: int  # primitives section: transfers per run (and DbSession overhead ops)
    memory_backlog: int  # memory section: messages in the backlog
    quiet_wait_seconds: float  # longest wait for a quiet host before each run


FULL = Sizes(
    messages=20_000, reps=3, primitive_ops=3_000, memory_backlog=100_000, quiet_wait_seconds=15.0
)
QUICK = Sizes(
    messages=2_000, reps=1, primitive_ops=300, memory_backlog=10_000, quiet_wait_seconds=2.0
)
