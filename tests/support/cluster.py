"""A private Redis Cluster for tests: 3 masters and 3 replicas started from the
``redis-server`` binary on free loopback ports in a temporary directory, joined with
``redis-cli --cluster create``. Faults (SIGKILL of a master, ``CLUSTER FAILOVER``) are
injected on these nodes only; the shared servers are never touched."""

from __future__ import annotations

import shutil
import signal
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from redis import Redis as SyncRedis
from redis.crc import key_slot
from redis.exceptions import RedisError

__all__ = ["ClusterNode", "PrivateRedisCluster"]

MASTERS = 3
NODE_TIMEOUT_MS = 2_000
_UNREACHABLE = (OSError, RedisError)


def _free_ports(count: int) -> list[int]:
    """Distinct free ports (each one checked while the others are held)."""
    sockets: list[socket.socket] = []
    try:
        for _ in range(count):
            sock = socket.socket()
            sock.bind(("127.0.0.1", 0))
            sockets.append(sock)
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


@dataclass
class ClusterNode:
    """One ``redis-server`` of the cluster."""

    port: int
    bus_port: int
    dir: Path
    process: subprocess.Popen[bytes] | None = None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def start(self) -> None:
        binary = shutil.which("redis-server") or "/usr/bin/redis-server"
        self.dir.mkdir(parents=True, exist_ok=True)
        self.process = subprocess.Popen(
            [
                binary, "--port", str(self.port), "--bind", "127.0.0.1",
                "--cluster-enabled", "yes", "--cluster-port", str(self.bus_port),
                "--cluster-config-file", "nodes.conf",
                "--cluster-node-timeout", str(NODE_TIMEOUT_MS),
                "--appendonly", "yes", "--appendfsync", "always", "--save", "",
                "--repl-diskless-sync-delay", "0",
                "--dir", str(self.dir), "--daemonize", "no",
                "--logfile", str(self.dir / "redis.log"),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )  # fmt: skip
        _wait_listening(self.port, 10)

    def client(self) -> SyncRedis:
        return SyncRedis(host="127.0.0.1", port=self.port, socket_timeout=5)

    def info(self, section: str) -> dict[str, object]:
        with self.client() as client:
            return dict(client.info(section))

    def drop_replica_links(self) -> None:
        """CLIENT KILL TYPE replica: this master's replicas lose their replication link
        (what it writes from now on reaches no replica until they reconnect)."""
        with self.client() as client:
            client.execute_command("CLIENT", "KILL", "TYPE", "replica")

    def pause(self) -> None:
        """SIGSTOP: the node keeps its sockets and answers nothing."""
        assert self.process is not None
        self.process.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        if self.running:
            assert self.process is not None
            self.process.send_signal(signal.SIGCONT)

    def kill(self) -> None:
        """SIGKILL: no shutdown, no final write."""
        if self.running:
            assert self.process is not None
            self.process.send_signal(signal.SIGCONT)
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(10)

    def close(self) -> None:
        if self.running:
            assert self.process is not None
            self.process.send_signal(signal.SIGCONT)
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)


def _wait_listening(port: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.02)
    raise RuntimeError(f"cluster node on port {port} did not start within {timeout} s")


def _replicated(replication: dict[str, object]) -> bool:
    """A master with a connected replica, or a replica whose link to its master is up."""
    if replication.get("role") == "master":
        return int(str(replication.get("connected_slaves", 0))) > 0
    return replication.get("master_link_status") == "up"


class PrivateRedisCluster:
    """Six nodes (3 masters, 3 replicas) with a short ``cluster-node-timeout`` (2 s) and no
    delay before a full resynchronisation (Redis waits 5 s by default, for more replicas
    to join the transfer), AOF with fsync always."""

    def __init__(self) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="safesync-cluster-"))
        ports = _free_ports(4 * MASTERS)
        self.nodes = [
            ClusterNode(port, bus, self.dir / str(port))
            for port, bus in zip(ports[: 2 * MASTERS], ports[2 * MASTERS :], strict=True)
        ]

    @property
    def url(self) -> str:
        return f"redis://{self.nodes[0].address}/0"

    def start(self) -> PrivateRedisCluster:
        """Start the nodes, join them and wait until every master has its replica; on any
        failure the nodes are stopped and the directory removed."""
        try:
            for node in self.nodes:
                node.start()
            cli = shutil.which("redis-cli") or "/usr/bin/redis-cli"
            subprocess.run(
                [cli, "--cluster", "create", *(n.address for n in self.nodes),
                 "--cluster-replicas", "1", "--cluster-yes"],
                check=True,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
                timeout=60,
            )  # fmt: skip
            self.wait_healthy(60)
        except BaseException:
            self.close()
            raise
        return self

    def close(self) -> None:
        for node in self.nodes:
            node.close()
        shutil.rmtree(self.dir, ignore_errors=True)

    # -- topology ------------------------------------------------------------------

    def _view(self) -> list[dict[str, object]]:
        """CLUSTER NODES (as redis-py parses it) seen by a live node."""
        for node in self.nodes:
            if not node.running:
                continue
            try:
                with node.client() as client:
                    nodes = client.execute_command("CLUSTER NODES")
            except _UNREACHABLE:
                continue
            return [{"address": address, **row} for address, row in nodes.items()]
        raise RuntimeError("no cluster node is running")

    def node_at(self, address: str) -> ClusterNode:
        return next(node for node in self.nodes if node.address == address)

    def master_of(self, key: str) -> ClusterNode:
        """The node serving ``key``'s slot now."""
        slot = key_slot(key.encode())
        for row in self._view():
            if "master" not in str(row["flags"]) or "fail" in str(row["flags"]):
                continue
            for low, high in row["slots"]:  # type: ignore[attr-defined]
                if int(low) <= slot <= int(high):
                    return self.node_at(str(row["address"]))
        raise RuntimeError(f"no master serves slot {slot}")

    def replica_of(self, master: ClusterNode) -> ClusterNode:
        """A replica connected to ``master`` (as the master itself reports it)."""
        replication = master.info("replication")
        for name, value in replication.items():
            online = isinstance(value, dict) and value.get("state") == "online"
            if name.startswith("slave") and online:
                assert isinstance(value, dict)
                return self.node_at(f"{value['ip']}:{value['port']}")
        raise RuntimeError(f"{master.address} has no connected replica")

    def cluster_ok(self, *, replicated: bool = True) -> bool:
        """Every running node reports ``cluster_state:ok`` and the same slot owners; with
        ``replicated``, every master also has a replica with its link up."""
        views = set()
        for node in self.nodes:
            if not node.running:
                continue
            try:
                with node.client() as client:
                    if client.cluster("info").get("cluster_state") != "ok":
                        return False
                    slots = client.cluster("slots")
                    replication = client.info("replication")
            except _UNREACHABLE:
                return False
            views.add(tuple(sorted((int(s[0]), int(s[1]), int(s[2][1])) for s in slots)))
            if replicated and not _replicated(replication):
                return False
        return len(views) == 1

    def wait_healthy(self, timeout: float, *, replicated: bool = True) -> float:
        """Wait until :meth:`cluster_ok`; the seconds it took."""
        started = time.monotonic()
        while not self.cluster_ok(replicated=replicated):
            if time.monotonic() - started > timeout:
                raise RuntimeError(f"the cluster did not become healthy within {timeout} s")
            time.sleep(0.1)
        return time.monotonic() - started

    def failover(self, replica: ClusterNode) -> None:
        """``CLUSTER FAILOVER`` on ``replica``: a coordinated switch, no write lost."""
        with replica.client() as client:
            client.execute_command("CLUSTER FAILOVER")
