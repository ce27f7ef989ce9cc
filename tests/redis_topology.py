"""Real Redis topologies for tests and benches, without Docker: `redis-server` processes on loopback.

- `SentinelSet`: one primary, one replica and three sentinels watching them as service `fr`,
  with a 1 s down-after so a failover takes seconds, not the 30 s default.
- `ClusterSet`: three primaries, the 16,384 slots split between them (no replicas).

Every process is private (free ports, its own directory, no persistence) and stopped by `stop()`.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import redis

from services.platform.redis_connection import free_port, wait_until_answers

SERVICE = "fr"


@dataclass
class Node:
    port: int
    proc: subprocess.Popen[bytes]
    argv: list[str] = field(default_factory=list)

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def client(self) -> redis.Redis:
        return redis.Redis(
            host="127.0.0.1", port=self.port, socket_timeout=2, decode_responses=True
        )

    def kill(self) -> None:
        """SIGKILL: no shutdown, no last replication, what a crashed host does."""
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait(10)

    def restart(self) -> None:
        """Start the same server again (a cluster node rejoins from its nodes file)."""
        assert self.proc.poll() is not None, "still running"
        self.proc = subprocess.Popen(self.argv, stdout=subprocess.DEVNULL)
        if not wait_until_answers(f"redis://127.0.0.1:{self.port}/0", 10):
            raise RuntimeError(f"redis-server on {self.port} did not come back")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.kill()


def _server(workdir: Path, port: int, *extra: str) -> Node:
    argv = ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "",
            "--appendonly", "no", "--dir", str(workdir), "--loglevel", "warning", *extra]  # fmt: skip
    node = Node(port, subprocess.Popen(argv, stdout=subprocess.DEVNULL), argv)
    if not wait_until_answers(f"redis://127.0.0.1:{port}/0", 10):
        node.stop()
        raise RuntimeError(f"redis-server on {port} did not answer")
    return node


def _wait(condition: object, what: str, timeout: float = 30) -> None:
    """Poll `condition()` (a readiness wait on real processes, not a timed sleep)."""
    give_up = time.monotonic() + timeout
    while time.monotonic() < give_up:
        with contextlib.suppress(redis.RedisError, OSError):
            if condition():  # type: ignore[operator]
                return
        time.sleep(0.05)
    raise RuntimeError(f"timed out waiting for {what}")


@dataclass
class SentinelSet:
    """1 primary + 1 replica + 3 sentinels (quorum 2) on loopback."""

    workdir: Path
    primary: Node
    replica: Node
    sentinels: list[Node] = field(default_factory=list)

    @property
    def url(self) -> str:
        hosts = ",".join(s.address for s in self.sentinels)
        return f"redis+sentinel://{hosts}/{SERVICE}/0"

    def current_primary(self) -> str:
        """The primary's address as a sentinel that answers reports it."""
        for sentinel in self.sentinels:
            with contextlib.suppress(redis.RedisError, OSError):
                host, port = sentinel.client().execute_command(
                    "SENTINEL", "GET-MASTER-ADDR-BY-NAME", SERVICE
                )
                return f"{host}:{port}"
        raise RuntimeError("no sentinel answers")

    def node_at(self, address: str) -> Node:
        return next(n for n in (self.primary, self.replica) if n.address == address)

    def wait_replicated(self) -> None:
        """Until the replica's link to the primary is up."""
        _wait(lambda: self.replica.client().info("replication")["master_link_status"] == "up",
              "the replica to sync")  # fmt: skip

    def wait_failover_from(self, old: str, timeout: float = 30) -> str:
        """Until the sentinels name a primary other than `old`, and it accepts writes."""
        _wait(lambda: self.current_primary() != old, "the sentinels to promote the replica",
              timeout)  # fmt: skip
        new = self.node_at(self.current_primary())
        _wait(lambda: new.client().info("replication")["role"] == "master", "the new primary")
        return new.address

    def stop(self) -> None:
        for node in [*self.sentinels, self.replica, self.primary]:
            node.stop()


def start_sentinel_set(down_after_ms: int = 1000) -> SentinelSet:
    workdir = Path(tempfile.mkdtemp(prefix="fr-sentinel-"))
    primary = _server(workdir, free_port())
    replica = _server(workdir, free_port(), "--replicaof", "127.0.0.1", str(primary.port))
    topology = SentinelSet(workdir, primary, replica)
    try:
        topology.wait_replicated()
        for _ in range(3):
            port = free_port()
            conf = workdir / f"sentinel-{port}.conf"  # a sentinel rewrites its own config
            conf.write_text(
                f"port {port}\nbind 127.0.0.1\ndir {workdir}\n"
                f"sentinel monitor {SERVICE} 127.0.0.1 {primary.port} 2\n"
                f"sentinel down-after-milliseconds {SERVICE} {down_after_ms}\n"
                f"sentinel failover-timeout {SERVICE} 5000\n"
                f"sentinel parallel-syncs {SERVICE} 1\n"
            )
            proc = subprocess.Popen(["redis-server", str(conf), "--sentinel", "--loglevel",
                                     "warning"], stdout=subprocess.DEVNULL)  # fmt: skip
            node = Node(port, proc)
            topology.sentinels.append(node)
            _wait(lambda n=node: n.client().ping(), "a sentinel")  # type: ignore[misc]
        # Every sentinel must know the replica and the other sentinels before a failover can
        # be agreed: the quorum is counted from what they have discovered.
        _wait(lambda: all(_master_info(s)["num-other-sentinels"] == 2
                          and _master_info(s)["num-slaves"] == 1 for s in topology.sentinels),
              "the sentinels to discover each other and the replica")  # fmt: skip
    except BaseException:
        topology.stop()
        raise
    return topology


def _master_info(sentinel: Node) -> dict[str, object]:
    """SENTINEL MASTER, parsed by redis-py (numbers as ints)."""
    return dict(sentinel.client().sentinel_master(SERVICE))


@dataclass
class ClusterSet:
    """Three cluster primaries on loopback, slots 0-5460, 5461-10922, 10923-16383."""

    workdir: Path
    nodes: list[Node]

    @property
    def url(self) -> str:
        return "redis-cluster://" + ",".join(n.address for n in self.nodes)

    def healthy(self) -> bool:
        """Every node answers and agrees the cluster is ok."""
        return all(n.client().cluster("info")["cluster_state"] == "ok" for n in self.nodes)

    def flushall(self) -> None:
        for node in self.nodes:
            node.client().flushall()

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()


def cluster_port() -> int:
    """A free port whose cluster bus port (+10000) exists and is free too."""
    while True:
        port = free_port()
        if port + 10000 <= 65535 and _is_free(port + 10000):
            return port


def _is_free(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def start_cluster() -> ClusterSet:
    workdir = Path(tempfile.mkdtemp(prefix="fr-cluster-"))
    nodes: list[Node] = []
    try:
        for _ in range(3):
            port = cluster_port()
            nodes.append(_server(workdir, port, "--cluster-enabled", "yes",
                                 "--cluster-config-file", str(workdir / f"nodes-{port}.conf"),
                                 "--cluster-node-timeout", "2000"))  # fmt: skip
        ranges = [(0, 5460), (5461, 10922), (10923, 16383)]
        for node, (first, last) in zip(nodes, ranges, strict=True):
            node.client().execute_command("CLUSTER", "ADDSLOTSRANGE", first, last)
        for node in nodes[1:]:
            nodes[0].client().execute_command("CLUSTER", "MEET", "127.0.0.1", node.port)
        _wait(lambda: all(n.client().cluster("info")["cluster_state"] == "ok" for n in nodes),
              "the cluster to agree")  # fmt: skip
        _wait(lambda: all(len(n.client().cluster("nodes")) == 3 for n in nodes),
              "every node to know the others")  # fmt: skip
    except BaseException:
        for node in nodes:
            node.stop()
        raise
    return ClusterSet(workdir, nodes)
