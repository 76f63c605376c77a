"""Save pipeline benchmark: snapshots/s from enqueue to applied in Redis, through Celery.

Run from the repository root: `python -m bench.pipeline [--quick] [--json]`.
One worker process (`--pool threads`, `--concurrency 2` by default, `--prefetch-multiplier 4`, as
in docker-compose; `--pool solo` with `--solo`) per batch
size; ~2 KB snapshots of 1000 sessions with rising seq; a raw pipelined-SET baseline in the
same run. All keys live under a unique `bench:pipe:<run>:` prefix and are deleted at the end.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import celery
import kombu
import redis
from celery import Celery

import celeryconfig
from bench._speech import Sentences
from sessions.codec import Snapshot
from sessions.settings import Settings
from sessions.state import SessionState, SessionStatus
from tasks.names import SAVE_SESSIONS
from tests.services import delete_prefix
from tests.workers import ROOT, broker_app, stop, wait_for_ping, worker_env

BATCH_SIZES = (1, 50, 500)
SESSIONS = 1000
TURNS = 12  # conversation items that bring a snapshot to ~2 KB of JSON
RAW_PIPELINE = 500
POLL_S = 0.005
STALL_S = 60.0
Wire = dict[str, Any]


@dataclass
class Row:
    batch: int
    snapshots: int
    tasks: int
    publish_s: float
    seconds: float
    snapshots_s: float
    tasks_s: float
    ratio: float
    stale: int


def session_state(cid: str, text: Sentences) -> SessionState:
    """An active state with TURNS transcript items of speech-like text."""
    state = SessionState(conversation_id=cid, status=SessionStatus.ACTIVE)
    for turn in range(TURNS):
        role = "user" if turn % 2 == 0 else "assistant"
        state.add_conversation_item({"role": role, "content": text.sentence()})
    return state


def build_snapshots(count: int, run: str) -> list[Wire]:
    """Snapshot i is session i % SESSIONS at seq i // SESSIONS + 1 (all apply in FIFO order)."""
    text = Sentences()
    states = [session_state(f"b{run}-{i:06d}", text) for i in range(min(count, SESSIONS))]
    out: list[Wire] = []
    for i in range(count):
        state = states[i % SESSIONS]
        state.seq = i // SESSIONS + 1
        out.append(Snapshot.of(state).model_dump(mode="json"))
    return out


def batches_of(items: list[Wire], size: int) -> list[list[Wire]]:
    return [items[i : i + size] for i in range(0, len(items), size)]


@contextmanager
def persistence_worker(
    app: Celery, env: dict[str, str], log_path: Path, prefetch: int, pool: list[str]
) -> Iterator[None]:
    """Like tests.workers.subprocess_worker, plus `--prefetch-multiplier` (as deployed)."""
    name = f"bench-{uuid.uuid4().hex[:8]}@localhost"
    cmd = [sys.executable, "-m", "celery", "-A", "workers.app", "worker", "-Q", "persistence",
           *pool, "--prefetch-multiplier", str(prefetch), "-n", name,
           "--loglevel", "INFO", "--without-gossip", "--without-mingle"]  # fmt: skip
    with open(log_path, "ab") as log:
        proc = subprocess.Popen(cmd, cwd=ROOT, env=worker_env(env), stdout=log, stderr=log)
    try:
        wait_for_ping(app, name, proc, log_path)
        yield
    finally:
        stop(proc)


def counters(client: redis.Redis, events_key: str) -> tuple[int, int]:
    applied, stale = client.hmget(events_key, ["snapshots_applied", "snapshots_stale"])
    return int(applied or 0), int(stale or 0)


def wait_done(client: redis.Redis, events_key: str, target: int) -> tuple[float, int, int]:
    """Poll until applied + stale reaches target; (monotonic time, applied, stale)."""
    last, last_change = -1, time.monotonic()
    while True:
        applied, stale = counters(client, events_key)
        now = time.monotonic()
        if applied + stale >= target:
            return now, applied, stale
        if applied + stale != last:
            last, last_change = applied + stale, now
        elif now - last_change > STALL_S:
            raise RuntimeError(f"no progress for {STALL_S:.0f} s at {last}/{target}")
        time.sleep(POLL_S)


def run_batch_size(
    url: str, prefix: str, size: int, snapshots: list[Wire], warm: Wire, prefetch: int, logs: Path,
    pool: list[str],
) -> Row:  # fmt: skip
    """Start a fresh worker on fresh prefixes, warm it up, then time all batches."""
    settings = Settings(
        redis_url=url, session_prefix=f"{prefix}b{size}:", celery_key_prefix=f"{prefix}q{size}:"
    )
    env = {"REDIS_URL": url, "SESSION_PREFIX": settings.session_prefix,
           "CELERY_KEY_PREFIX": settings.celery_key_prefix}  # fmt: skip
    events_key = settings.session_prefix + "_events"
    batches = batches_of(snapshots, size)
    app = broker_app(settings)
    client = redis.Redis.from_url(url)
    try:
        with persistence_worker(app, env, logs / f"worker-b{size}.log", prefetch, pool):
            app.send_task(SAVE_SESSIONS, args=[[warm]])  # builds the task context, loads scripts
            _, base_applied, base_stale = wait_done(client, events_key, 1)
            start = time.monotonic()
            for batch in batches:  # as the persister sends them: the batch's JSON text
                app.send_task(SAVE_SESSIONS, args=[json.dumps(batch, separators=(",", ":"))])
            published = time.monotonic()
            done, applied, stale = wait_done(
                client, events_key, base_applied + base_stale + len(snapshots)
            )
    finally:
        client.close()
        app.close()
    seconds = done - start
    return Row(size, len(snapshots), len(batches), published - start, seconds,
               (applied - base_applied) / seconds, len(batches) / seconds, 0.0,
               stale - base_stale)  # fmt: skip


def raw_set_rate(url: str, prefix: str, snapshots: list[Wire]) -> float:
    """SET/s of the same JSON values, pipelines of RAW_PIPELINE, one sync client."""
    values = [json.dumps(s).encode() for s in snapshots]
    keys = [f"{prefix}raw:{i % SESSIONS}" for i in range(len(values))]
    client = redis.Redis.from_url(url)
    try:
        client.ping()
        start = time.monotonic()
        for lo in range(0, len(values), RAW_PIPELINE):
            chunk = zip(keys[lo : lo + RAW_PIPELINE], values[lo : lo + RAW_PIPELINE], strict=True)
            with client.pipeline(transaction=False) as pipe:
                for key, value in chunk:
                    pipe.set(key, value)
                pipe.execute()
        return len(values) / (time.monotonic() - start)
    finally:
        client.close()


def conditions(
    url: str, avg_size: float, counts: dict[int, int], prefetch: int, pool: list[str]
) -> dict[str, Any]:
    client = redis.Redis.from_url(url)
    try:
        server = str(client.info("server")["redis_version"])
    finally:
        client.close()
    return {
        "python": platform.python_version(),
        "celery": celery.__version__,
        "kombu": kombu.__version__,
        "redis_py": redis.__version__,
        "redis_server": server,
        "cpus": os.cpu_count(),
        "worker": f"1 process, {' '.join(pool)}, --prefetch-multiplier {prefetch}",
        "snapshot_json_bytes_avg": round(avg_size),
        "compression": f"{celeryconfig.COMPRESSION} (speech-like transcript text)",
        "sessions": f"{SESSIONS} distinct conversation ids, seq rising per round",
        "counts": {str(k): v for k, v in counts.items()},
    }


def print_report(cond: dict[str, Any], rows: list[Row], raw_s: float, raw_n: int) -> None:
    for key, value in cond.items():
        print(f"{key:>24}: {value}")
    print(f"\nraw baseline: {raw_n} pipelined SETs ({RAW_PIPELINE}/pipeline): {raw_s:,.0f} SET/s\n")
    head = ("batch", "snapshots", "tasks", "publish s", "seconds", "snapshots/s", "tasks/s",
            "÷ raw SET/s", "stale")  # fmt: skip
    print("{:>6} {:>10} {:>7} {:>10} {:>8} {:>12} {:>9} {:>12} {:>6}".format(*head))
    for r in rows:
        print(f"{r.batch:>6} {r.snapshots:>10} {r.tasks:>7} {r.publish_s:>10.2f}"
              f" {r.seconds:>8.2f} {r.snapshots_s:>12,.0f} {r.tasks_s:>9,.0f}"
              f" {r.ratio:>12.3f} {r.stale:>6}")  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    default_url = os.environ.get("REDIS_URL") or "redis://127.0.0.1:6379"
    parser.add_argument("--redis-url", default=default_url)
    parser.add_argument("--snapshots", type=int, default=None, help="default 20000 (quick 2000)")
    parser.add_argument("--prefetch", type=int, default=4, help="worker prefetch multiplier")
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--solo", action="store_true", help="--pool solo instead of 2 threads")
    parser.add_argument(
        "--batch-sizes", default=",".join(map(str, BATCH_SIZES)), help="comma-separated"
    )
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    sizes = [int(size) for size in args.batch_sizes.split(",")]
    pool = ["--pool", "solo"] if args.solo else ["--pool", "threads", "--concurrency", "2"]
    n = args.snapshots or (2000 if args.quick else 20000)
    counts = {size: max(size, n // 10) if size == 1 else n for size in sizes}
    run = uuid.uuid4().hex[:8]
    prefix = f"bench:pipe:{run}:"
    snapshots = build_snapshots(n, run)
    warm = Snapshot.of(session_state(f"w{run}", Sentences(0))).model_dump(mode="json")
    avg_size = sum(len(json.dumps(s)) for s in snapshots) / len(snapshots)
    try:
        raw_s = raw_set_rate(args.redis_url, prefix, snapshots)
        with tempfile.TemporaryDirectory(prefix="bench-pipeline-") as logs:
            rows = [run_batch_size(args.redis_url, prefix, size, snapshots[: counts[size]], warm,
                                   args.prefetch, Path(logs), pool)
                    for size in sizes]  # fmt: skip
    finally:
        delete_prefix(args.redis_url, prefix)
    for row in rows:
        row.ratio = row.snapshots_s / raw_s
    cond = conditions(args.redis_url, avg_size, counts, args.prefetch, pool)
    if args.json:
        doc = {"conditions": cond, "raw_set_s": raw_s, "rows": [asdict(r) for r in rows]}
        print(json.dumps(doc, indent=2))
    else:
        print_report(cond, rows, raw_s, n)
    return 0


if __name__ == "__main__":
    sys.exit(main())
