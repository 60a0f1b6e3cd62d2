"""Helpers for partitioned-stream scenarios: member processes, steady keyed traffic with
per-key sequence numbers, and waiting for (and timing) a rebalance."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import IO, Any

from safesync_async import (
    PartitionedProducer,
    PartitionedStream,
    RedisClient,
    partition_status,
)

from .servers import wait_stopped

__all__ = ["KeyedTraffic", "MemberProcess", "held_by", "wait_balanced"]

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


class MemberProcess:
    """``python -m tests.support.partition_worker`` as a child process."""

    def __init__(self, member: str, *args: str) -> None:
        self.member = member
        self._out: IO[bytes] = tempfile.TemporaryFile()  # noqa: SIM115 (closed in close())
        self._err: IO[bytes] = tempfile.TemporaryFile()  # noqa: SIM115
        self.process = subprocess.Popen(
            [sys.executable, "-m", "tests.support.partition_worker", "--member", member, *args],
            cwd=REPO_ROOT,
            stdout=self._out,
            stderr=self._err,
        )

    @property
    def running(self) -> bool:
        return self.process.poll() is None

    def kill(self) -> None:
        self.process.kill()
        self.process.wait(10)

    def terminate(self) -> None:
        self.process.send_signal(signal.SIGTERM)

    def pause(self) -> None:
        os.kill(self.process.pid, signal.SIGSTOP)
        wait_stopped(self.process.pid)

    def resume(self) -> None:
        os.kill(self.process.pid, signal.SIGCONT)

    async def stopped(self, timeout: float = 60) -> dict[str, Any]:
        """Wait for a graceful exit; the ownership counters it printed."""
        deadline = time.monotonic() + timeout
        while self.running and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        if self.running:
            self.kill()
            raise AssertionError(f"{self.member} did not stop:\n{self.stderr}")
        assert self.process.returncode == 0, f"{self.member} failed:\n{self.stderr}"
        self._out.seek(0)
        lines = self._out.read().decode().strip().splitlines()
        return dict(json.loads(lines[-1]))

    @property
    def stderr(self) -> str:
        self._err.seek(0)
        return self._err.read().decode(errors="replace")[-4_000:]

    def close(self) -> None:
        if self.running:
            self.resume()
            self.kill()
        self._out.close()
        self._err.close()


@dataclass
class KeyedTraffic:
    """Publishes ``{"k", "seq"}`` messages over ``keys`` keys (the key is the ordering
    key), ``batch`` every ``interval`` seconds, until stopped; counts what it sent."""

    producer: PartitionedProducer
    keys: int
    batch: int = 20
    interval: float = 0.05
    sent: Counter[str] = field(default_factory=Counter)
    _stop: asyncio.Event = field(default_factory=asyncio.Event)

    def key_names(self) -> list[str]:
        return [f"k{i}" for i in range(self.keys)]

    async def run(self) -> None:
        names = self.key_names()
        turn = 0
        while not self._stop.is_set():
            keys = [names[(turn * 7 + i * 13) % len(names)] for i in range(self.batch)]
            turn += 1
            payloads = []
            for key in keys:
                self.sent[key] += 1
                payloads.append({"k": key, "seq": self.sent[key]})
            await self.producer.publish_batch(payloads, keys=keys)
            await asyncio.sleep(self.interval)

    def stop(self) -> None:
        self._stop.set()


async def wait_balanced(
    redis: RedisClient, stream: PartitionedStream, group: str, members: set[str], timeout: float
) -> float:
    """Seconds until every partition is owned by one of ``members`` and each of them owns
    its share (the counts differ by at most one)."""
    started = time.monotonic()
    while True:
        status = await partition_status(redis, stream, group)
        owners = Counter(s.owner for s in status)
        if set(owners) == members and max(owners.values()) - min(owners.values()) <= 1:
            return time.monotonic() - started
        if time.monotonic() - started > timeout:
            raise AssertionError(f"not balanced over {members} after {timeout} s: {owners}")
        await asyncio.sleep(0.05)


async def held_by(redis: RedisClient, stream: PartitionedStream, group: str, member: str) -> int:
    """Entries pending to ``member`` over every partition (running or read ahead)."""
    held = 0
    for key in stream.stream_keys():
        if await redis.exists(key):
            held += len(await redis.xpending_range(key, group, "-", "+", 1_000, member))
    return held
