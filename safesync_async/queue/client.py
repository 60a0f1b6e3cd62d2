"""Redis clients fit for long blocking reads: a factory (standalone Redis or Redis
Cluster), a check of user-supplied clients, and detection of the server's stream
features."""

from __future__ import annotations

import logging
import socket
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal, TypeAlias, overload

from redis.asyncio import Redis
from redis.asyncio.cluster import RedisCluster
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff
from sqlalchemy.ext.asyncio import AsyncEngine

from ..errors import ConfigurationError, QueueError
from ._errors import redis_errors

__all__ = [
    "RedisClient",
    "ServerInfo",
    "check_redis_client",
    "create_redis_client",
    "describe_servers",
    "is_cluster",
    "server_info",
]

#: What every API of the library that talks to Redis accepts: a standalone client or a
#: Redis Cluster client (both from ``redis.asyncio``).
RedisClient: TypeAlias = Redis | RedisCluster

_log = logging.getLogger("safesync_async.queue.client")

# Seconds a socket read may take beyond the server-side block time.
_READ_MARGIN = 5.0
_KEEPALIVE: dict[int, int] = {}
for _name, _value in (("TCP_KEEPIDLE", 10), ("TCP_KEEPINTVL", 5), ("TCP_KEEPCNT", 3)):
    if hasattr(socket, _name):
        _KEEPALIVE[getattr(socket, _name)] = _value
# Weakest first: the persistence a report shows for several masters is the weakest one.
_PERSISTENCE_ORDER = ("none", "unknown", "rdb", "aof")


def is_cluster(client: RedisClient) -> bool:
    """True for a Redis Cluster client."""
    return isinstance(client, RedisCluster)


@overload
def create_redis_client(
    url: str, *, cluster: Literal[False] = False, block_ms: int = 5_000, **overrides: Any
) -> Redis: ...


@overload
def create_redis_client(
    url: str, *, cluster: Literal[True], block_ms: int = 5_000, **overrides: Any
) -> RedisCluster: ...


@overload
def create_redis_client(
    url: str, *, cluster: bool, block_ms: int = 5_000, **overrides: Any
) -> RedisClient: ...


def create_redis_client(
    url: str, *, cluster: bool = False, block_ms: int = 5_000, **overrides: Any
) -> RedisClient:
    """A ``redis.asyncio.Redis`` configured for consumers and producers, or with
    ``cluster=True`` a ``redis.asyncio.RedisCluster`` (``url`` names any node of the
    cluster; the others are discovered), with the same policy:

    * ``socket_timeout`` = block time + 5 s: a blocking read is never cut short, and a
      frozen server or half-open socket is detected instead of hanging forever;
    * TCP keepalive (idle 10 s, interval 5 s, 3 probes) and a health check every 15 s;
    * exactly one retry: a dropped connection is re-established once (on a cluster,
      after a topology refresh), but a stalled server does not turn into ten replays of
      every command (redis-py's default). A master that is down longer (a failover in
      progress) is an outage the consumer waits out with its own backoff.

    ``overrides`` are passed to ``Redis.from_url`` (``RedisCluster.from_url``) and win
    over these defaults.
    """
    settings: dict[str, Any] = {
        "socket_timeout": block_ms / 1000 + _READ_MARGIN,
        "socket_connect_timeout": 5.0,
        "socket_keepalive": True,
        "socket_keepalive_options": dict(_KEEPALIVE),
        "health_check_interval": 15,
        "retry": Retry(ExponentialBackoff(cap=1.0, base=0.05), 1),
    }
    settings.update(overrides)
    if cluster:
        return RedisCluster.from_url(url, **settings)
    return Redis.from_url(url, **settings)


def _connection_settings(client: RedisClient) -> tuple[Mapping[str, Any], Retry | None]:
    """The connection keyword arguments and the command retry policy of a client."""
    if isinstance(client, RedisCluster):
        return client.get_connection_kwargs(), client.retry
    return client.connection_pool.connection_kwargs, client.get_retry()


def check_redis_client(client: RedisClient, *, block_ms: int) -> list[str]:
    """Check a user-supplied client (standalone or cluster); return warnings, raise for
    settings that cannot work.

    Raises :class:`ConfigurationError` if ``decode_responses`` is on (entries are binary)
    or if ``socket_timeout`` is not above the block time (every idle read would fail).
    Warns about no socket timeout (a half-open connection hangs for ever), keepalive
    off, and a retry policy that replays a stalled blocking read many times.
    """
    kwargs, retry = _connection_settings(client)
    if kwargs.get("decode_responses"):
        raise ConfigurationError(
            "the Redis client decodes responses; create it with decode_responses=False "
            "(stream entries are bytes and may not be UTF-8)"
        )
    warnings: list[str] = []
    timeout = kwargs.get("socket_timeout")
    if timeout is None:
        warnings.append(
            "the Redis client has no socket_timeout: a frozen server or half-open connection "
            f"can hang the consumer for ever; use socket_timeout={block_ms / 1000 + _READ_MARGIN:g}"
        )
    elif timeout <= block_ms / 1000:
        raise ConfigurationError(
            f"socket_timeout={timeout} s is not above block_ms={block_ms} ms: every idle read "
            f"would time out; use socket_timeout >= {block_ms / 1000 + _READ_MARGIN:g} "
            "or safesync_async.create_redis_client()"
        )
    if not kwargs.get("socket_keepalive"):
        warnings.append("the Redis client has TCP keepalive off; dead peers go unnoticed")
    retries = retry.get_retries() if retry is not None else 0
    if retries < 0 or retries > 3:
        warnings.append(
            f"the Redis client retries each command {retries if retries >= 0 else 'forever'} "
            "time(s): a stalled server stalls the consumer for that many socket timeouts and "
            "non-idempotent commands (XADD) may be replayed; one retry is enough"
        )
    for warning in warnings:
        _log.warning(warning)
    return warnings


@dataclass(frozen=True, slots=True)
class ServerInfo:
    """What the Redis-compatible server is and which stream features it has."""

    name: str
    version: tuple[int, ...]
    persistence: str  # "aof", "rdb", "none" or "unknown"

    @property
    def has_xackdel(self) -> bool:
        """XACKDEL / XDELEX and trimming with an ACKED policy (Redis 8.2+)."""
        return self.name == "redis" and self.version >= (8, 2)

    @property
    def has_readgroup_claim(self) -> bool:
        """XREADGROUP ... CLAIM min-idle (Redis 8.4+)."""
        return self.name == "redis" and self.version >= (8, 4)


async def server_info(client: RedisClient) -> ServerInfo:
    """Detect the server flavour, version and persistence; refuse servers without
    XAUTOCLAIM. On a cluster every master is asked: the lowest version and the weakest
    persistence are reported."""
    if isinstance(client, RedisCluster):
        return await _cluster_info(client)
    with redis_errors("INFO"):
        info = await client.info("server")
        persistence = await client.info("persistence")
    name, version = _identify(info)
    if persistence.get("aof_enabled"):
        return ServerInfo(name, version, "aof")
    return ServerInfo(name, version, _rdb_mode(await _save_config(client)))


async def _cluster_info(client: RedisCluster) -> ServerInfo:
    with redis_errors("INFO (cluster masters)"):
        infos = await client.info("server", target_nodes=RedisCluster.PRIMARIES)
        persistence = await client.info("persistence", target_nodes=RedisCluster.PRIMARIES)
    found = [_identify(info) for info in _per_node(infos).values()]
    name = found[0][0]
    version = min(version for _, version in found)
    modes = []
    saves: dict[str, Any] | None = None
    for node, node_persistence in _per_node(persistence).items():
        if node_persistence.get("aof_enabled"):
            modes.append("aof")
            continue
        if saves is None:
            saves = await _cluster_save_config(client)
        save = saves.get(node)
        modes.append(_rdb_mode(None if save is None else _text(save)))
    return ServerInfo(name, version, min(modes, key=_PERSISTENCE_ORDER.index))


def _per_node(reply: Any) -> dict[str, Mapping[str, Any]]:
    """A reply of several cluster nodes as {node name: reply}; one node's as {"": reply}."""
    if isinstance(reply, Mapping) and reply and all(isinstance(v, Mapping) for v in reply.values()):
        return {str(k): v for k, v in reply.items()}
    return {"": reply}


def _identify(info: Mapping[str, Any]) -> tuple[str, tuple[int, ...]]:
    name = "valkey" if info.get("server_name") == "valkey" or "valkey_version" in info else "redis"
    raw_version = str(info.get("valkey_version") or info.get("redis_version") or "0")
    version = tuple(int(part) for part in raw_version.split(".") if part.isdigit())
    if name == "redis" and version < (6, 2):
        raise QueueError(f"Redis {raw_version} lacks XAUTOCLAIM; safesync_async needs Redis 6.2+")
    return name, version


def _rdb_mode(save: str | None) -> str:
    return "unknown" if save is None else "rdb" if save.strip() else "none"


def _text(value: object) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


async def _save_config(client: Redis) -> str | None:
    """The ``save`` setting, or None where CONFIG is disabled (managed servers)."""
    try:
        with redis_errors("CONFIG GET save"):
            found = await client.config_get("save")
    except QueueError:
        return None
    return _text(found.get("save", ""))


async def _cluster_save_config(client: RedisCluster) -> dict[str, Any]:
    """The ``save`` setting of every master, by node name ({} where CONFIG is disabled)."""
    try:
        with redis_errors("CONFIG GET save (cluster masters)"):
            found = await client.config_get("save", target_nodes=RedisCluster.PRIMARIES)
    except QueueError:
        return {}
    return {node: reply.get("save", "") for node, reply in _per_node(found).items()}


def describe_servers(client: RedisClient, engine: AsyncEngine | None = None) -> str:
    """Where a consumer's servers are, for messages: the Redis address (and the database
    URL), passwords never included."""
    if isinstance(client, RedisCluster):
        nodes = ", ".join(f"{node.host}:{node.port}" for node in client.get_nodes()[:3])
        redis = f"Redis Cluster at {nodes or 'its startup nodes'}"
    else:
        kwargs = client.connection_pool.connection_kwargs
        if "path" in kwargs:
            redis = f"Redis at unix://{kwargs['path']}"
        else:
            redis = f"Redis at {kwargs.get('host', 'localhost')}:{kwargs.get('port', 6379)}"
            redis += f"/{kwargs.get('db', 0)}"
    if engine is None:
        return redis
    return f"{redis}, database at {engine.url.render_as_string(hide_password=True)}"
