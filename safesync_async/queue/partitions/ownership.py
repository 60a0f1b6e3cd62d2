"""What a partitioned consumer holds: one record per partition it owns, and the counters
it reports."""

from __future__ import annotations

import asyncio
import os
import secrets
import socket
from dataclasses import dataclass

from ..consumer import QueueConsumer
from .leases import Lease

__all__ = ["OwnedPartition", "PartitionOwnership", "member_name"]


def member_name() -> str:
    """A member name unique to this process: host, process id, a random suffix."""
    return f"{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(3)}"


@dataclass(frozen=True, slots=True)
class PartitionOwnership:
    """A partitioned consumer's counters and what it owns now.

    Attributes:
        member: this consumer's name in the group's membership.
        owned: partition -> epoch of the leases held now.
        acquired: leases acquired since the start.
        released: leases given up (rebalance or stop).
        lease_losses: leases lost without being given up (expired or taken).
        fenced: handler transactions refused because a newer owner registered.
    """

    member: str
    owned: dict[int, int]
    acquired: int
    released: int
    lease_losses: int
    fenced: int


@dataclass(eq=False)
class OwnedPartition:
    """One partition held: its lease, the task consuming it, and its consumer."""

    lease: Lease
    renewed_at: float
    task: asyncio.Task[None] | None = None
    consumer: QueueConsumer | None = None
    lost: bool = False
    giving_up: bool = False

    def stop(self) -> None:
        """Stop consuming it: its consumer drains, or its start-up is cancelled."""
        if self.consumer is not None:
            self.consumer.stop()
        elif self.task is not None:
            self.task.cancel()  # still registering its epoch or taking over
