"""Session storage on one Redis and on a three-master Redis Cluster; Sentinel failover time.

Run from the repository root: `python -m bench.topology [--quick] [--json]`.

Every server is a throwaway `redis-server` started here (the one Redis too, so both sides
run alike): one client, one operation at a time, the operations of `bench/storage.py`
(alternating runs, medians, each against the raw GET of its own topology in the same run),
the expiry sweep, and listing. Then a Sentinel group (a master, a replica, three sentinels):
a writer saves one session every 5 ms while `SENTINEL FAILOVER` runs; the time from the
failover command to the first save that lands on the new master, for several failovers.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import statistics
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import asdict, dataclass
from typing import Any

import redis

from bench.storage import Op, Row, alternating, core_ops, load
from sessions.codec import Snapshot
from sessions.errors import StorageUnavailable
from sessions.redis_async import RedisSessionStorage
from sessions.redis_topology import RedisTopology
from sessions.service import SessionManagerService
from tests.helpers import make_state
from tests.services import throwaway_redis
from tests.topology import SentinelGroup, cluster_group, sentinel_group

MAX_AGE_S = 3600
WRITE_EVERY_S = 0.005


@dataclass
class Sweep:
    topology: str
    stored: int
    expired: int
    runs_ms: list[float]

    @property
    def median_ms(self) -> float:
        return statistics.median(self.runs_ms)


@asynccontextmanager
async def topologies(masters: int) -> AsyncIterator[dict[str, RedisTopology]]:
    """One throwaway Redis and a cluster of `masters`, as topologies."""
    with throwaway_redis() as url, cluster_group(masters) as cluster:
        yield {
            "one redis": RedisTopology(url=url),
            f"cluster x{masters}": RedisTopology(kind="cluster", url=cluster.url, shards=16),
        }


async def raw_get(topology: RedisTopology) -> tuple[Op, Any]:
    """The baseline: GET of a 2 KB value through redis-py's client for that topology, as it
    comes (its default settings)."""
    from redis.asyncio import Redis
    from redis.asyncio.cluster import RedisCluster

    client_class: Any = RedisCluster if topology.kind == "cluster" else Redis
    client = client_class.from_url(topology.url, decode_responses=True)
    await client.set("bench:raw", "x" * 2048)

    async def get(_: int) -> bool:
        return await client.get("bench:raw") is not None

    return get, client


async def operations(topos: dict[str, RedisTopology], n: int, runs: int) -> list[Row]:
    backends: dict[str, dict[str, Op]] = {}
    clients, storages = [], []
    for name, topology in topos.items():
        get, client = await raw_get(topology)
        storage = RedisSessionStorage(session_prefix="bench:ops:", topology=topology)
        clients.append(client)
        storages.append(storage)
        backends[name] = {"raw GET 2KB": get} | await core_ops(storage)
    try:
        return await alternating(backends, n, runs)
    finally:
        for client in clients:
            await client.aclose()
        for storage in storages:
            await storage.close()


async def sweep(
    topology: RedisTopology, tag: str, stored: int, expired: int, repeats: int
) -> Sweep:
    storage = RedisSessionStorage(session_prefix=f"bench:sweep:{tag}:", topology=topology,
                                  max_connections=50)  # fmt: skip
    try:
        await load(storage, [f"live-{i}" for i in range(stored - expired)])
        runs = []
        for r in range(repeats):
            await load(storage, [f"exp-{r}-{i}" for i in range(expired)], idle_s=7200)
            started = time.perf_counter()
            ended = await SessionManagerService(storage).cleanup_expired_sessions(MAX_AGE_S)
            runs.append((time.perf_counter() - started) * 1000)
            if ended != expired:
                raise RuntimeError(f"sweep ended {ended} of {expired}")
        return Sweep(tag, stored, expired, runs)
    finally:
        await storage.close()


async def listing(topology: RedisTopology, tag: str, live: int, calls: int) -> float:
    storage = RedisSessionStorage(session_prefix=f"bench:list:{tag}:", topology=topology)
    try:
        await load(storage, [f"live-{i}" for i in range(live)])
        times = []
        for _ in range(calls):
            started = time.perf_counter()
            if len(await storage.list_active_sessions()) != live:
                raise RuntimeError("listing: wrong count")
            times.append((time.perf_counter() - started) * 1000)
        return statistics.median(times)
    finally:
        await storage.close()


async def failovers(count: int) -> list[float]:
    """Seconds from SENTINEL FAILOVER to the first save that lands on the new master."""
    with sentinel_group() as group:
        topology = RedisTopology(kind="sentinel", master_name=group.master_name,
                                 sentinels=tuple(("127.0.0.1", s.port) for s in group.sentinels),
                                 password=group.data_password,
                                 sentinel_password=group.sentinel_password)  # fmt: skip
        storage = RedisSessionStorage(session_prefix="bench:failover:", topology=topology)
        await storage.start()  # follows +switch-master, as a bridge does
        try:
            return [await one_failover(group, storage, i) for i in range(count)]
        finally:
            await storage.close()


async def one_failover(group: SentinelGroup, storage: RedisSessionStorage, index: int) -> float:
    state = make_state(f"writer-{index}")
    await storage.save(Snapshot.of(state))
    await asyncio.to_thread(group.wait_for_replica)  # a failover can happen now
    before = group.master_port()
    started = time.perf_counter()
    failing = asyncio.create_task(asyncio.to_thread(group.failover))
    while True:  # the writer: a save every WRITE_EVERY_S, retried as the workers retry
        await asyncio.sleep(WRITE_EVERY_S)
        state.seq += 1
        try:
            await storage.save(Snapshot.of(state))
        except StorageUnavailable:
            continue
        if failing.done():
            failing.result()  # the failover itself failed: say so
            if await _on_master(group, before, state.conversation_id, state.seq):
                break
    await failing
    return time.perf_counter() - started


async def _on_master(group: SentinelGroup, old_port: int, cid: str, seq: int) -> bool:
    """The new master is in place and holds the save of `seq`."""
    port = group.master_port()
    if port == old_port:
        return False
    client = redis.Redis(port=port, password=group.data_password, decode_responses=True)
    try:
        keys = [k for k in client.scan_iter(match=f"bench:failover:{cid}")]
        return bool(keys) and int(client.hget(keys[0], "seq") or -1) >= seq
    finally:
        client.close()


def conditions(args: argparse.Namespace) -> dict[str, Any]:
    return {
        "python": platform.python_version(),
        "redis_py": redis.__version__,
        "cpu_count": os.cpu_count(),
        "servers": "throwaway redis-server processes on loopback (one Redis; a cluster of "
        f"{args.masters} masters, no replicas, 16 shards); one client, one operation at a time",
        "runs": args.runs,
        "ops_per_measurement": args.ops,
        "sweep": f"{args.stored} stored, {args.expired} expired; {args.repeats} repeats",
        "failover": f"{args.failovers} forced failovers (SENTINEL FAILOVER, down-after 1 s); "
        f"a save every {WRITE_EVERY_S * 1000:g} ms",
    }


async def main_async(args: argparse.Namespace) -> dict[str, Any]:
    async with topologies(args.masters) as topos:
        rows = await operations(topos, args.ops, args.runs)
        sweeps = [await sweep(t, name.replace(" ", "-"), args.stored, args.expired, args.repeats)
                  for name, t in topos.items()]  # fmt: skip
        lists = {
            name: await listing(t, name.replace(" ", "-"), 500, 10) for name, t in topos.items()
        }
    seconds = await failovers(args.failovers)
    return {"rows": rows, "sweeps": sweeps, "list_500_ms": lists, "failover_s": seconds}


def report(cond: dict[str, Any], result: dict[str, Any]) -> None:
    for name, value in cond.items():
        print(f"{name:>20}: {value}")
    print(f"\n{'operation':<16} {'topology':<12} {'p50 µs':>9} {'p99 µs':>9} {'ratio':>6}"
          "   (ratio: to the raw GET of the same topology and run)")  # fmt: skip
    for r in result["rows"]:
        print(f"{r.operation:<16} {r.backend:<12} {r.p50_us:>9.1f} {r.p99_us:>9.1f} "
              f"{r.ratio:>5.2f}x")  # fmt: skip
    print("\nsweep (ms): " + "; ".join(
        f"{s.topology} median {s.median_ms:.1f} {[round(x, 1) for x in s.runs_ms]}"
        for s in result["sweeps"]))  # fmt: skip
    first, *others = result["sweeps"]
    for other in others:
        print(
            f"sweep, {other.topology} / {first.topology}: {other.median_ms / first.median_ms:.2f}"
        )
    print("list 500 live (ms, median of 10): "
          + ", ".join(f"{k} {v:.2f}" for k, v in result["list_500_ms"].items()))  # fmt: skip
    s = result["failover_s"]
    print(
        f"failover to first landed save (s): median {statistics.median(s):.2f}, "
        f"each {[round(x, 2) for x in s]}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer operations and runs")
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--masters", type=int, default=3)
    args = parser.parse_args()
    args.ops, args.runs = (300, 3) if args.quick else (1000, 5)
    args.stored, args.expired, args.repeats = (10_000, 500, 3) if args.quick else (50_000, 1_000, 5)
    args.failovers = 2 if args.quick else 4
    result = asyncio.run(main_async(args))
    cond = conditions(args)
    report(cond, result)
    if args.json:
        doc = {"conditions": cond, "rows": [asdict(r) for r in result["rows"]],
               "sweeps": [asdict(s) for s in result["sweeps"]],
               "list_500_ms": result["list_500_ms"],
               "failover_s": result["failover_s"]}  # fmt: skip
        print(json.dumps(doc, indent=2))


if __name__ == "__main__":
    main()
