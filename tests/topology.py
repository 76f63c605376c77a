"""Throwaway Redis topologies on loopback, started from the `redis-server` binary.

`sentinel_group()`: one master, one replica and three sentinels watching them, with passwords
on the data nodes and on the sentinels. `cluster_group()`: a Redis Cluster of three masters
(no replicas), created with `redis-cli --cluster create`. Both wait until the topology is
ready and stop every process they started, whatever happened.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import redis

from tests.services import _port_open, free_port

MASTER_NAME = "opus-master"
DATA_PASSWORD = "data-secret"
SENTINEL_PASSWORD = "sentinel-secret"
READY_TIMEOUT_S = 30.0


def binaries_missing() -> str | None:
    """Why these topologies cannot start here, or None."""
    missing = [b for b in ("redis-server", "redis-cli") if shutil.which(b) is None]
    return f"{' and '.join(missing)} not installed" if missing else None


@dataclass
class Node:
    """One redis-server process."""

    port: int
    proc: subprocess.Popen[bytes]
    log: Path

    def client(self, password: str | None = None) -> redis.Redis:
        return redis.Redis(port=self.port, password=password, decode_responses=True,
                           socket_timeout=5)  # fmt: skip

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


@dataclass
class SentinelGroup:
    """A master, its replica and three sentinels."""

    master: Node
    replica: Node
    sentinels: list[Node]
    master_name: str = MASTER_NAME
    data_password: str = DATA_PASSWORD
    sentinel_password: str = SENTINEL_PASSWORD

    @property
    def sentinel_addresses(self) -> str:
        """The REDIS_SENTINELS value: host:port,host:port,..."""
        return ",".join(f"127.0.0.1:{s.port}" for s in self.sentinels)

    def master_port(self) -> int:
        """The port of the master the sentinels name now."""
        client = self.sentinels[0].client(self.sentinel_password)
        try:
            return int(client.sentinel_get_master_addr_by_name(self.master_name)[1])
        finally:
            client.close()

    def failover(self) -> int:
        """Force a failover (SENTINEL FAILOVER); wait until the other node is the master.

        It first waits until the replica is in sync and known to the sentinels (right after
        a failover the old master is still resyncing, and sentinels refuse another)."""
        self.wait_for_replica()
        before = self.master_port()
        client = self.sentinels[0].client(self.sentinel_password)
        try:
            client.execute_command("SENTINEL", "FAILOVER", self.master_name)
        finally:
            client.close()
        _wait(lambda: self.master_port() != before and self._is_master(self.master_port()),
              "the failover to complete")  # fmt: skip
        return self.master_port()

    def wait_for_replica(self) -> None:
        """Until the replica is in sync and the sentinels know it (a failover can go there)."""
        _wait(self._replica_ready, "the replica to be in sync")

    def _replica_ready(self) -> bool:
        port = self.master_port()
        replica = next(n for n in (self.master, self.replica) if n.port != port)
        if not _linked(replica):
            return False
        client = self.sentinels[0].client(self.sentinel_password)
        try:
            known = client.sentinel_slaves(self.master_name)
        finally:
            client.close()
        return any(int(r["port"]) == replica.port and "down" not in str(r["flags"])
                   and "disconnected" not in str(r["flags"]) for r in known)  # fmt: skip

    def _is_master(self, port: int) -> bool:
        node = next(n for n in (self.master, self.replica) if n.port == port)
        client = node.client(self.data_password)
        try:
            return str(client.info("replication")["role"]) == "master"
        finally:
            client.close()


@dataclass
class ClusterGroup:
    """Three cluster masters."""

    nodes: list[Node] = field(default_factory=list)

    @property
    def url(self) -> str:
        """A REDIS_URL for the cluster (any node: the client discovers the rest)."""
        return f"redis://127.0.0.1:{self.nodes[0].port}"


def _cluster_port() -> int:
    """A free port whose cluster bus port (port + 10000) is free as well."""
    while True:
        port = free_port()
        if port + 10_000 <= 65_535 and not _port_open(port + 10_000):
            return port


def start_node(workdir: Path, name: str, port: int, args: list[str]) -> Node:
    log = workdir / f"{name}.log"
    cmd = ["redis-server", *args, "--port", str(port), "--bind", "127.0.0.1",
           "--dir", str(workdir), "--logfile", str(log)]  # fmt: skip
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    node = Node(port, proc, log)
    _wait(lambda: proc.poll() is None and _port_open(port), f"{name} to listen on {port}",
          failed=lambda: proc.poll() is not None)  # fmt: skip
    return node


def _wait(
    condition: Callable[[], bool], what: str, failed: Callable[[], bool] = lambda: False
) -> None:
    deadline = time.monotonic() + READY_TIMEOUT_S
    while True:
        try:
            if condition():
                return
        except redis.RedisError:
            pass
        if failed() or time.monotonic() > deadline:
            raise RuntimeError(f"timed out waiting for {what}")
        time.sleep(0.05)


@contextmanager
def sentinel_group() -> Iterator[SentinelGroup]:
    """Start a master, a replica and three sentinels; stop them all afterwards."""
    with ExitStack() as stack:
        workdir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="opus-sentinel-")))
        data = ["--save", "", "--appendonly", "no", "--requirepass", DATA_PASSWORD,
                "--masterauth", DATA_PASSWORD]  # fmt: skip
        master = start_node(workdir, "master", free_port(), data)
        stack.callback(master.stop)
        replica_args = [*data, "--replicaof", "127.0.0.1", str(master.port)]
        replica = start_node(workdir, "replica", free_port(), replica_args)
        stack.callback(replica.stop)
        _wait(lambda: _linked(replica), "the replica to sync")
        sentinels = []
        for index in range(3):
            sentinel = _start_sentinel(workdir, index, master.port)
            stack.callback(sentinel.stop)
            sentinels.append(sentinel)
        group = SentinelGroup(master, replica, sentinels)
        _wait(lambda: _sentinels_ready(group), "the sentinels to see each other and the replica")
        yield group


def _linked(replica: Node) -> bool:
    client = replica.client(DATA_PASSWORD)
    try:
        return str(client.info("replication").get("master_link_status")) == "up"
    finally:
        client.close()


def _start_sentinel(workdir: Path, index: int, master_port: int) -> Node:
    port = free_port()
    conf = workdir / f"sentinel-{index}.conf"
    conf.write_text(
        f"port {port}\nbind 127.0.0.1\ndir {workdir}\n"
        f"requirepass {SENTINEL_PASSWORD}\n"
        f"sentinel monitor {MASTER_NAME} 127.0.0.1 {master_port} 2\n"
        f"sentinel auth-pass {MASTER_NAME} {DATA_PASSWORD}\n"
        f"sentinel sentinel-pass {SENTINEL_PASSWORD}\n"
        f"sentinel down-after-milliseconds {MASTER_NAME} 1000\n"
        f"sentinel failover-timeout {MASTER_NAME} 5000\n"
        f"sentinel parallel-syncs {MASTER_NAME} 1\n"
    )
    log = workdir / f"sentinel-{index}.log"
    proc = subprocess.Popen(
        ["redis-server", str(conf), "--sentinel", "--logfile", str(log)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    node = Node(port, proc, log)
    _wait(lambda: _port_open(port), f"sentinel {index} to listen",
          failed=lambda: proc.poll() is not None)  # fmt: skip
    return node


def _sentinels_ready(group: SentinelGroup) -> bool:
    for sentinel in group.sentinels:
        client = sentinel.client(SENTINEL_PASSWORD)
        try:
            if len(client.sentinel_sentinels(MASTER_NAME)) < 2:
                return False
            if len(client.sentinel_slaves(MASTER_NAME)) < 1:
                return False
        finally:
            client.close()
    return True


@contextmanager
def cluster_group(masters: int = 3) -> Iterator[ClusterGroup]:
    """Start `masters` cluster nodes and create the cluster; stop them all afterwards."""
    with ExitStack() as stack:
        workdir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="opus-cluster-")))
        group = ClusterGroup()
        for index in range(masters):
            node_dir = workdir / f"node-{index}"
            node_dir.mkdir()
            args = ["--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf",
                    "--cluster-node-timeout", "5000", "--save", "",
                    "--appendonly", "no"]  # fmt: skip
            node = start_node(node_dir, f"node-{index}", _cluster_port(), args)
            stack.callback(node.stop)
            group.nodes.append(node)
        addresses = [f"127.0.0.1:{n.port}" for n in group.nodes]
        subprocess.run(
            ["redis-cli", "--cluster", "create", *addresses, "--cluster-replicas", "0",
             "--cluster-yes"],
            check=True, capture_output=True, timeout=60,
        )  # fmt: skip
        _wait(lambda: all(_cluster_ok(n) for n in group.nodes), "the cluster to be ok")
        yield group


def _cluster_ok(node: Node) -> bool:
    client = node.client()
    try:
        info = client.execute_command("CLUSTER", "INFO")
        text = info if isinstance(info, str) else str(info)
        return "cluster_state:ok" in text
    finally:
        client.close()
