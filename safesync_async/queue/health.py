"""A stream health report: length, per-group lag and pending work, consumer idleness."""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from typing import Any

from ._errors import redis_errors
from ._streams import GroupInfo, read_groups, text
from .client import RedisClient, server_info
from .keys import dead_letter_key, legacy_dead_letter_key
from .models import entry_timestamp_ms

__all__ = ["ConsumerHealth", "GroupHealth", "StreamHealth", "stream_health"]


@dataclass(frozen=True, slots=True)
class ConsumerHealth:
    name: str
    pending: int
    idle_ms: int
    inactive_ms: int | None  # Redis 7.2+: time since the last successful read (None: never)


@dataclass(frozen=True, slots=True)
class GroupHealth:
    name: str
    pending: int
    lag: int | None  # entries not yet delivered to the group (None: server cannot tell)
    last_delivered_id: str
    oldest_pending_id: str | None
    oldest_pending_age_s: float | None  # since the oldest pending entry was added
    oldest_pending_idle_s: float | None  # since the oldest pending entry was last delivered
    max_delivery_count: int  # highest delivery count among the oldest pending entries
    consumers: tuple[ConsumerHealth, ...]


@dataclass(frozen=True, slots=True)
class StreamHealth:
    stream: str
    exists: bool
    length: int
    first_id: str | None
    last_id: str | None
    groups: tuple[GroupHealth, ...]
    dead_letters: int
    persistence: str
    # Entries left under the dead-letter key used before the key layout (<stream>:dead),
    # counted when the default key is reported on; 0 otherwise.
    legacy_dead_letters: int = 0

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    def describe(self) -> str:
        """A short human-readable report."""
        lines = [
            f"stream {self.stream!r}: {self.length} entries, persistence={self.persistence}"
            + f", dead letters: {self.dead_letters}"
        ]
        if self.legacy_dead_letters:
            lines.append(
                f"  {self.legacy_dead_letters} dead letter(s) under the old key "
                f"{legacy_dead_letter_key(self.stream)!r}: replay or purge them there"
            )
        for g in self.groups:
            age = f"{g.oldest_pending_age_s:.1f}s" if g.oldest_pending_age_s is not None else "-"
            lines.append(
                f"  group {g.name!r}: lag={g.lag} pending={g.pending} oldest-pending-age={age} "
                f"max-deliveries={g.max_delivery_count} consumers={len(g.consumers)}"
            )
            for c in g.consumers:
                lines.append(f"    consumer {c.name!r}: pending={c.pending} idle={c.idle_ms}ms")
        return "\n".join(lines)


def _inactive(consumer: dict[str, Any]) -> int | None:
    value = consumer.get("inactive")
    return None if value is None or int(value) < 0 else int(value)


async def _group_health(
    redis: RedisClient, stream: str, group: GroupInfo, sample: int
) -> GroupHealth:
    with redis_errors("stream health", stream):
        consumers = tuple(
            ConsumerHealth(text(c["name"]), int(c["pending"]), int(c["idle"]), _inactive(c))
            for c in await redis.xinfo_consumers(stream, group.name)
        )
        oldest = await redis.xpending_range(stream, group.name, "-", "+", sample)
    oldest_id = text(oldest[0]["message_id"]) if oldest else None
    age = (
        max(0.0, time.time() - entry_timestamp_ms(oldest_id) / 1000)
        if oldest_id is not None
        else None
    )
    return GroupHealth(
        name=group.name,
        pending=group.pending,
        lag=group.lag,
        last_delivered_id=group.last_delivered_id,
        oldest_pending_id=oldest_id,
        oldest_pending_age_s=age,
        oldest_pending_idle_s=int(oldest[0]["time_since_delivered"]) / 1000 if oldest else None,
        max_delivery_count=max((int(r["times_delivered"]) for r in oldest), default=0),
        consumers=consumers,
    )


async def stream_health(
    redis: RedisClient, stream: str, *, dead_letter_stream: str | None = None, sample: int = 100
) -> StreamHealth:
    """Inspect ``stream`` and its dead-letter stream (default :func:`dead_letter_key`,
    the consumer's default). ``sample`` bounds how many of each group's oldest pending
    entries are read for delivery counts. With the default dead-letter stream, entries
    still under the key used before the key layout (``<stream>:dead``) are counted in
    ``legacy_dead_letters``. On a cluster, the persistence is the weakest among the
    masters'."""
    count_legacy = False
    if dead_letter_stream is None:
        dead_letter_stream = dead_letter_key(stream)
        count_legacy = dead_letter_stream != legacy_dead_letter_key(stream)
    persistence = (await server_info(redis)).persistence
    with redis_errors("stream health", stream):
        exists = bool(await redis.exists(stream))
        dead = int(await redis.xlen(dead_letter_stream))
        old = int(await redis.xlen(legacy_dead_letter_key(stream))) if count_legacy else 0
        if not exists:
            return StreamHealth(stream, False, 0, None, None, (), dead, persistence, old)
        info = await redis.xinfo_stream(stream)
    groups = [
        await _group_health(redis, stream, group, sample)
        for group in await read_groups(redis, stream)
    ]
    first, last = info.get("first-entry"), info.get("last-entry")
    return StreamHealth(
        stream=stream,
        exists=True,
        length=int(info["length"]),
        first_id=text(first[0]) if first else None,
        last_id=text(last[0]) if last else None,
        groups=tuple(groups),
        dead_letters=dead,
        persistence=persistence,
        legacy_dead_letters=old,
    )
