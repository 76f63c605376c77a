"""Per-call memory: many sequential calls through one bridge process leave nothing behind.

Run from the repository root: `python -m bench.call_churn [--calls N] [--quick] [--json]`.

One bridge server (`opus-sessions serve`, a subprocess) on a private throwaway Redis with a
Celery worker (a subprocess) applying its saves and archives; the strict simulator and the
AudioCodes callers run here. Calls come one after another, each greeted, given one turn, and
then ended in turn by a hang-up, a `session.end`, or a dropped WebSocket (the call is handed
over PAUSED and left for the expiry sweep). Every CHECKPOINT calls the bridge's per-call
structures are read from `/stats` (live calls, the persister's live and dirty sessions, calls
waiting for a grace end) and its resident set size from /proc. The baseline is the RSS after
the warm-up checkpoint, measured in the same run; the ratio is the last RSS over it.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

from bridges.sim.server import RealtimeSimulator
from bridges.sim.telephony import AudioCodesClient
from sessions.settings import Settings
from tests.services import free_port, throwaway_redis
from tests.workers import ROOT, broker_app, subprocess_worker, worker_env

CHECKPOINT = 1000


def rss_kib(pid: int) -> int:
    """The resident set size of a process, in KiB (Linux)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


async def one_call(url: str, index: int) -> None:
    caller = AudioCodesClient(url, f"churn-{index}")
    await caller.connect()
    await caller.initiate()
    await caller.expect("playStream.stop")
    await caller.say("12")
    await caller.expect(lambda m: m.get("type") == "playStream.stop" and m["streamId"] == "2")
    ending = index % 3
    if ending == 0:
        await caller.hangup()
        await caller.closed()
    elif ending == 1:
        await caller.end("done")
        await caller.closed()
    else:
        await caller.close()


async def structures(http: str) -> dict[str, Any]:
    async with httpx.AsyncClient() as web:
        stats = (await web.get(f"{http}/stats", timeout=10)).json()
    persister = stats["persister"]
    return {
        "live_calls": stats["live_calls"],
        "persister_live": persister["live_sessions"],
        "persister_dirty": persister["dirty"],
        "waiting_grace": stats["calls_waiting_grace"],
    }


async def wait_healthy(http: str, proc: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 30
    async with httpx.AsyncClient() as web:
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise RuntimeError("the bridge exited during start-up")
            try:
                if (await web.get(f"{http}/health", timeout=1)).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            await asyncio.sleep(0.1)  # nothing to await: the bridge exposes readiness by HTTP
    raise RuntimeError("the bridge did not become healthy")


async def run(calls: int, workdir: Path) -> dict[str, Any]:
    rows: list[dict[str, Any]] = []
    with throwaway_redis() as redis_url:
        env = {
            "REDIS_URL": redis_url,
            "ARCHIVE_DIR": str(workdir / "archive"),
            "SAVE_INTERVAL_MS": "50",
        }
        app = broker_app(Settings(redis_url=redis_url))
        with subprocess_worker(app, env, workdir / "worker.log", queues="persistence,archive"):
            async with RealtimeSimulator() as sim:
                port = free_port()
                cmd = [sys.executable, "-m", "cli.main", "serve", "--port", str(port)]
                with open(workdir / "bridge.log", "ab") as log:
                    proc = subprocess.Popen(
                        cmd,
                        cwd=ROOT,
                        stdout=log,
                        stderr=log,
                        env=worker_env(env | {"OPENAI_REALTIME_URL": sim.url}),
                    )
                try:
                    http, url = f"http://127.0.0.1:{port}", f"ws://127.0.0.1:{port}"
                    await wait_healthy(http, proc)
                    started = time.perf_counter()
                    for index in range(calls):
                        await one_call(url, index)
                        if (index + 1) % CHECKPOINT == 0 or index + 1 == calls:
                            sim.connections.clear()  # the simulator's records, not the bridge's
                            row = {
                                "calls": index + 1,
                                "rss_kib": rss_kib(proc.pid),
                                **await structures(http),
                            }
                            rows.append(row)
                            print(json.dumps(row), flush=True)
                    elapsed_s = time.perf_counter() - started
                finally:
                    proc.terminate()
                    proc.wait(timeout=30)
    baseline = rows[0]["rss_kib"]
    return {
        "conditions": {
            "calls": calls,
            "checkpoint_every": CHECKPOINT,
            "call": "initiate, greeting, one turn, then a hang-up / session.end / dropped socket",
            "bridge": "opus-sessions serve subprocess, Redis storage (throwaway redis-server), "
            "one Celery worker subprocess (persistence, archive)",
            "python": platform.python_version(),
            "machine": platform.machine(),
        },
        "seconds": round(elapsed_s, 1),
        "calls_per_s": round(calls / elapsed_s, 1),
        "checkpoints": rows,
        "rss_baseline_kib": baseline,
        "rss_last_kib": rows[-1]["rss_kib"],
        "rss_ratio_last_to_baseline": round(rows[-1]["rss_kib"] / baseline, 3),
        "structures_empty_at_every_checkpoint": all(
            r["live_calls"] == 0 and r["persister_live"] == 0 and r["waiting_grace"] == 0
            for r in rows
        ),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=10_000)
    parser.add_argument("--quick", action="store_true", help="1,000 calls")
    parser.add_argument("--json", action="store_true", help="print the result as JSON only")
    args = parser.parse_args()
    calls = 1000 if args.quick else args.calls
    with tempfile.TemporaryDirectory(prefix="opus-churn-") as workdir:
        result = asyncio.run(run(calls, Path(workdir)))
    if args.json:
        print(json.dumps(result, indent=2))
        return
    print(
        f"\n{calls} sequential calls in {result['seconds']} s "
        f"({result['calls_per_s']} calls/s); conditions: {result['conditions']}"
    )
    print(
        f"RSS: baseline {result['rss_baseline_kib']} KiB (after {CHECKPOINT} calls), last "
        f"{result['rss_last_kib']} KiB, ratio {result['rss_ratio_last_to_baseline']}"
    )
    print(
        f"per-call structures empty at every checkpoint: "
        f"{result['structures_empty_at_every_checkpoint']}"
    )


if __name__ == "__main__":
    main()
