"""Adding entries: XADDs pipelined (one round trip per node), with an optional replication
wait.

``WAIT n timeout`` counts the replicas that have received the writes *of its own
connection*: sent on another connection, it confirms nothing. So the WAIT travels in the
same pipeline as the XADDs, after them: on a standalone Redis that is one connection; on
a cluster, where WAIT has no key to be routed by, the XADDs of each master and the WAIT
go together on one connection of that master, and any redirection (the slot moved, the
master failed over) fails the publication instead of being followed to another node.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, cast

from redis import exceptions as redis_exc
from redis.asyncio.cluster import ClusterNode, PipelineCommand, RedisCluster

from .._validation import check_int
from ..errors import ConfigurationError, ReplicationError
from ._errors import redis_errors
from .client import RedisClient

__all__ = ["Entry", "ReplicationWait", "add_entries"]

#: One entry to add: (stream, fields).
Entry = tuple[str, Mapping[bytes, bytes]]


@dataclass(frozen=True, slots=True)
class ReplicationWait:
    """Wait until ``replicas`` replicas acknowledged the entries, at most ``timeout_ms``."""

    replicas: int
    timeout_ms: int

    @classmethod
    def of(cls, replicas: int, timeout_ms: int) -> ReplicationWait | None:
        """The wait for these settings; None for ``replicas=0`` (no wait)."""
        check_int("wait_replicas", replicas, minimum=0)
        check_int("wait_timeout_ms", timeout_ms, minimum=1)
        return cls(replicas, timeout_ms) if replicas else None

    def check_client(self, redis: RedisClient) -> None:
        """The wait must end before the client's socket timeout cuts the read short."""
        kwargs = (
            redis.get_connection_kwargs()
            if isinstance(redis, RedisCluster)
            else redis.connection_pool.connection_kwargs
        )
        timeout = kwargs.get("socket_timeout")
        if timeout is not None and self.timeout_ms >= timeout * 1000:
            raise ConfigurationError(
                f"wait_timeout_ms={self.timeout_ms} is not below the client's socket_timeout "
                f"({timeout} s): the WAIT would be cut short as a connection error"
            )


def _text(value: object) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _flat(fields: Mapping[bytes, bytes]) -> list[bytes]:
    return [part for item in fields.items() for part in item]


def _ids(replies: Sequence[Any]) -> list[str]:
    """Entry ids from XADD replies; raises the first error among them."""
    for reply in replies:
        if isinstance(reply, BaseException):
            raise reply
    return [_text(reply) for reply in replies]


async def add_entries(
    redis: RedisClient,
    entries: Sequence[Entry],
    *,
    wait: ReplicationWait | None,
    operation: str,
    stream: str | None = None,
) -> list[str]:
    """XADD every entry, pipelined; with ``wait``, then WAIT for the replicas. Returns the
    ids in order.

    Not atomic: an error may come after some entries were added (their ids are lost to
    the caller). With ``wait``, :class:`ReplicationError` means every entry was added but
    not confirmed by enough replicas.
    """
    if not entries:
        return []
    if wait is None:
        return await _pipelined(redis, entries, operation, stream)
    if isinstance(redis, RedisCluster):
        return await _cluster_with_wait(redis, entries, wait, operation, stream)
    with redis_errors(operation, stream):
        async with redis.pipeline(transaction=False) as pipe:
            for key, fields in entries:
                pipe.xadd(key, cast(Any, dict(fields)))
            pipe.wait(wait.replicas, wait.timeout_ms)
            replies = await pipe.execute(raise_on_error=False)
        ids = _ids(replies[:-1])
    _check_acknowledged(ids, replies[-1], wait, stream)
    return ids


async def _pipelined(
    redis: RedisClient, entries: Sequence[Entry], operation: str, stream: str | None
) -> list[str]:
    with redis_errors(operation, stream):
        if len(entries) == 1:
            key, fields = entries[0]
            return [_text(await redis.xadd(key, cast(Any, dict(fields))))]
        async with redis.pipeline(transaction=False) as pipe:
            for key, fields in entries:
                pipe.xadd(key, cast(Any, dict(fields)))
            return _ids(await pipe.execute())


def _check_acknowledged(
    ids: list[str], acknowledged: object, wait: ReplicationWait, stream: str | None
) -> None:
    where = f" to {stream!r}" if stream else ""
    if isinstance(acknowledged, BaseException):
        raise ReplicationError(
            f"{len(ids)} entr{'y' if len(ids) == 1 else 'ies'} added{where}, but the replication "
            f"wait failed ({type(acknowledged).__name__}: {acknowledged}); a failover could "
            "lose them",
            entry_ids=ids,
            acknowledged=None,
            required=wait.replicas,
        ) from acknowledged
    count = int(cast(int, acknowledged))
    if count < wait.replicas:
        raise ReplicationError(
            f"{len(ids)} entr{'y' if len(ids) == 1 else 'ies'} added{where}, but only {count} of "
            f"{wait.replicas} replica(s) acknowledged within {wait.timeout_ms} ms; a failover "
            "now could lose them",
            entry_ids=ids,
            acknowledged=count,
            required=wait.replicas,
        )


async def _cluster_with_wait(
    redis: RedisCluster,
    entries: Sequence[Entry],
    wait: ReplicationWait,
    operation: str,
    stream: str | None,
) -> list[str]:
    """Group the entries by the master of their slot; on each master, the XADDs and the
    WAIT go on one connection (concurrently across masters)."""
    with redis_errors(operation, stream):
        await redis.initialize()  # the slot map (returns at once when it is current)
        groups: dict[str, tuple[ClusterNode, list[int]]] = {}
        for index, (key, _) in enumerate(entries):
            node = redis.get_node_from_key(key)
            if node is None:
                raise redis_exc.SlotNotCoveredError(f"no master known for {key!r}")
            groups.setdefault(node.name, (node, []))[1].append(index)
    outcomes = await asyncio.gather(
        *(
            _on_node(redis, node, [entries[i] for i in indexes], wait, operation, stream)
            for node, indexes in groups.values()
        ),
        return_exceptions=True,
    )
    ids: list[str] = [""] * len(entries)
    first_error: BaseException | None = None
    for (_, indexes), outcome in zip(groups.values(), outcomes, strict=True):
        if isinstance(outcome, BaseException):
            first_error = first_error or outcome
            continue
        node_ids, _acknowledged = outcome
        for index, entry_id in zip(indexes, node_ids, strict=True):
            ids[index] = entry_id
    if first_error is not None:
        raise first_error
    return ids


async def _on_node(
    redis: RedisCluster,
    node: ClusterNode,
    entries: Sequence[Entry],
    wait: ReplicationWait,
    operation: str,
    stream: str | None,
) -> tuple[list[str], int]:
    """XADDs then WAIT on one connection of ``node``; the ids and the replicas count."""
    commands = [
        PipelineCommand(position, "XADD", key, "*", *_flat(fields))
        for position, (key, fields) in enumerate(entries)
    ]
    commands.append(PipelineCommand(len(entries), "WAIT", wait.replicas, wait.timeout_ms))
    try:
        with redis_errors(operation, stream):
            await node.execute_pipeline(commands)
            ids = _ids([command.result for command in commands[:-1]])
    except Exception:
        await _heal_slot_map(redis, entries[0][0])
        raise
    acknowledged = commands[-1].result
    if isinstance(acknowledged, BaseException):
        await _heal_slot_map(redis, entries[0][0])
    _check_acknowledged(ids, acknowledged, wait, stream)
    return ids, int(cast(int, acknowledged))


async def _heal_slot_map(redis: RedisCluster, key: str) -> None:
    """After a failure on a master chosen from the slot map, send one routed command for
    the slot: its error handling (a refresh after a connection error, the slot moved
    after MOVED) brings the map up to date for the next attempt."""
    with contextlib.suppress(redis_exc.RedisError, redis_exc.RedisClusterException, OSError):
        await redis.exists(key)
