"""When is a consumer group drained: every entry delivered and none pending."""

from __future__ import annotations

import asyncio
from typing import Any

import redis
import redis.asyncio


def _text(value: object) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def is_drained(groups: list[dict[str, Any]], stream_info: dict[str, Any], group: str) -> bool:
    """True when ``group`` has delivered the stream's last entry and has nothing pending
    (from the replies of XINFO GROUPS and XINFO STREAM)."""
    last_id = _text(stream_info["last-generated-id"])
    for info in groups:
        if _text(info["name"]) == group:
            return int(info["pending"]) == 0 and _text(info["last-delivered-id"]) == last_id
    return False


async def group_drained(client: redis.asyncio.Redis, stream: str, group: str) -> bool:
    """:func:`is_drained` in one pipelined round trip (asyncio client)."""
    async with client.pipeline(transaction=False) as pipe:
        pipe.xinfo_groups(stream)
        pipe.xinfo_stream(stream)
        groups, info = await pipe.execute()
    return is_drained(groups, info, group)


async def wait_until_drained(
    client: redis.asyncio.Redis, stream: str, group: str, interval: float
) -> None:
    """Poll :func:`group_drained` every ``interval`` seconds until it is true."""
    while True:
        if await group_drained(client, stream, group):
            return
        await asyncio.sleep(interval)


def group_drained_sync(client: redis.Redis, stream: str, group: str) -> bool:
    """:func:`is_drained` in one pipelined round trip (synchronous client)."""
    with client.pipeline(transaction=False) as pipe:
        pipe.xinfo_groups(stream)
        pipe.xinfo_stream(stream)
        groups, info = pipe.execute()
    return is_drained(groups, info, group)
