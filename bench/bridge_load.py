"""Bridge load benchmark: relay latency of N concurrent real-time AudioCodes calls per process.

Run from the repository root: `python -m bench.bridge_load [--quick] [--json]`.

One bridge server (uvicorn) and the realtime-model simulator (paced 20 ms bot deltas) run in
their own subprocesses; the N AudioCodes clients run here, each streaming raw/lpcm16 20 ms
frames at real time: digit utterances and silence, so the simulator's VAD takes turns and
the bot reads the digits back. For every frame of the measured window the bridge process
keeps two latencies: relay, the bridge's own metric (its code gets the message -> send
done), and send, from the sender's send time (carried in the message; one monotonic clock
on the host) to send done, which also counts time queued in the server and event loop.
Persistence "on": Redis storage + Celery persister + one worker, keys under a private
`bench:load:<run>:` prefix deleted at the end; "off": memory storage, no persister work.
With `--pin` the bridge has CPU 0 to itself and everything else (simulator, worker, clients,
a private redis-server) shares CPU 1: the bridge's own cost, without the other processes of
this one host competing with it for the CPU (as they would not in a deployment).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import random
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from base64 import b64encode
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import uvicorn
from websockets.version import version as websockets_version

from bridges.audio import (
    AudioConverter,
    MediaFormat,
    from_base64,
    model_format_for,
    silence,
    to_base64,
)
from bridges.sim.speech import speech_frames
from bridges.sim.telephony import AudioCodesClient
from sessions.settings import Settings
from tests.services import delete_prefix, free_port, throwaway_redis
from tests.workers import ROOT, broker_app, stop, wait_for_ping, worker_env

try:
    import psutil  # type: ignore[import-untyped]
except ImportError:
    psutil = None
try:
    import uvloop
except ImportError:
    uvloop = None  # type: ignore[assignment]
LOOP = None if uvloop is None else uvloop.new_event_loop

FORMAT: MediaFormat = "raw/lpcm16"
# The formats compared at N=FORMAT_CALLS: every telephony format, and µ-law through the
# transcoding path (PCM16 24 kHz to and from the model) it took before passthrough.
FORMATS_COMPARED = (
    "raw/mulaw",
    "raw/mulaw~transcode",
    "raw/lpcm16_24",
    "raw/lpcm16",
    "raw/lpcm16_8",
)
FORMAT_CALLS = 100
GREETING_MS = 600
RAMP_S, WARMUP_S = 1.0, 2.0
LIMIT_MS = 20.0
WORKER_QUEUES = "persistence,archive,maintenance"


from bench._load_servers import (  # noqa: E402
    DIRECTIONS,
    FRAME_MS,
    TICK_MS,
    Summary,
    serve_bridge,
    serve_simulator,
    summary,
)


@dataclass
class Plan:
    base_url: str
    media: MediaFormat
    window: tuple[float, float]
    stop_at: float
    lags_ms: list[float] = field(default_factory=list)
    streaming: int = 0
    failures: list[str] = field(default_factory=list)


def caller_frames(rng: random.Random, media: MediaFormat) -> Iterator[bytes]:
    """Silence through the greeting, then utterances of 3-8 digits (never starting with 9,
    which would be a function call), each followed by silence long enough for the answer."""
    quiet = silence(media, FRAME_MS)
    yield from [quiet] * (GREETING_MS // FRAME_MS)
    while True:
        digits = str(rng.randint(1, 8)) + "".join(rng.choices("0123456789", k=rng.randint(2, 7)))
        yield from speech_frames(digits, media, FRAME_MS)
        yield from [quiet] * ((len(digits) * 60 + 400) // FRAME_MS)


_BASE64: dict[bytes, str] = {}


async def call(plan: Plan, cid: str, start_at: float, rng: random.Random) -> None:
    await asyncio.sleep(start_at - time.perf_counter())
    client = AudioCodesClient(plan.base_url, cid, os.environ.get("AUDIOCODES_BOT_TOKEN"))
    try:
        await client.connect()
        accepted = await client.initiate([plan.media])
        if accepted["type"] != "session.accepted":
            raise RuntimeError(f"{cid}: {accepted.get('reason')}")
        await client.send("userStream.start")
        await client.expect("userStream.started")
        plan.streaming += 1
        head = f'{{"type":"userStream.chunk","conversationId":"{cid}","audioChunk":"'
        due = time.perf_counter() + rng.random() * FRAME_MS / 1000  # calls' phases spread
        for frame in caller_frames(rng, plan.media):
            if due >= plan.stop_at:
                break
            if (delay := due - time.perf_counter()) > 0:
                await asyncio.sleep(delay)
            now = time.perf_counter()
            if plan.window[0] <= due < plan.window[1]:
                plan.lags_ms.append((now - due) * 1000)
            text = _BASE64.get(frame) or _BASE64.setdefault(frame, b64encode(frame).decode())
            await client.send_raw(f'{head}{text}","sentS":{now!r}}}')
            due += FRAME_MS / 1000
            if len(client.received) > 100:
                client.received.clear()  # nothing awaits them from here on
        await client.send("userStream.stop")
        await client.hangup()
        await client.closed(15)
    except Exception as exc:
        plan.failures.append(f"{type(exc).__name__}: {exc}"[:200])
    finally:
        await client.close()


def http_get(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=30) as response:
        return json.loads(response.read())


def cpu_s(pid: int) -> float:
    """CPU seconds used by a process; by the whole machine for pid 0; stolen by the
    hypervisor from this machine's CPUs for pid -1."""
    if pid <= 0:
        ticks = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]
        used = ticks[7] if pid else sum(ticks) - ticks[3] - ticks[4]
        return used / os.sysconf("SC_CLK_TCK")
    if psutil is not None:
        times = psutil.Process(pid).cpu_times()
        return float(times.user + times.system)
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@dataclass
class Row:
    calls: int
    persistence: str
    media: str
    load1: float
    streaming: int
    ms: dict[str, Summary]
    cpu_pct: dict[str, float]
    persister: dict[str, Any]
    failures: list[str]
    bridge_cpu_us_per_frame: float | None = None

    def ok(self, prefix: str = "") -> bool:
        p99s = [self.ms[prefix + d]["p99"] for d in DIRECTIONS]
        return not self.failures and all(p is not None and p <= LIMIT_MS for p in p99s)


async def drive(
    n: int,
    mode: str,
    port: int,
    seconds: float,
    pids: dict[str, int],
    seed: int,
    media: str = FORMAT,
) -> Row:
    http = f"http://127.0.0.1:{port}"
    t0 = time.perf_counter() + 0.2
    start = t0 + RAMP_S + WARMUP_S
    caller_format: MediaFormat = media.split("~")[0]  # type: ignore[assignment]
    window_s = (start, start + seconds)
    plan = Plan(f"ws://127.0.0.1:{port}", caller_format, window_s, start + seconds + 0.5)
    load1 = os.getloadavg()[0]
    tasks = [
        asyncio.create_task(
            call(plan, f"load-{mode}-{n}-{i:04d}", t0 + RAMP_S * i / n, random.Random(seed + i))
        )
        for i in range(n)
    ]

    async def snapshot(action: str) -> tuple[Any, dict[str, float]]:
        cpu = {name: cpu_s(pid) for name, pid in pids.items()} | {"wall": time.monotonic()}
        return await asyncio.to_thread(http_get, f"{http}/bench/window?action={action}"), cpu

    await asyncio.sleep(start - time.perf_counter())
    _, cpu_before = await snapshot("start")
    streaming = plan.streaming
    await asyncio.sleep(plan.window[1] - time.perf_counter())
    window, cpu_after = await snapshot("stop")
    stats = await asyncio.to_thread(http_get, f"{http}/stats")
    await asyncio.gather(*tasks)
    wall = cpu_after.pop("wall") - cpu_before.pop("wall")
    cpu = {k: round(100 * (cpu_after[k] - cpu_before[k]) / wall, 1) for k in cpu_after}
    keys = ("snapshots_sent", "publish_failures", "backlog", "dropped")
    frames = sum(int(window[d]["count"] or 0) for d in DIRECTIONS)
    bridge_s = cpu_after["bridge"] - cpu_before["bridge"]
    per_frame = round(bridge_s / frames * 1e6, 1) if frames else None
    return Row(
        n,
        mode,
        media,
        load1,
        streaming,
        window | {"client_lag": summary(plan.lags_ms)},
        cpu,
        {k: stats["persister"][k] for k in keys},
        plan.failures[:5],
        per_frame,
    )


@contextmanager
def spawn(cmd: list[str], env: dict[str, str], log_path: Path) -> Iterator[subprocess.Popen[bytes]]:
    with open(log_path, "ab") as log:
        proc = subprocess.Popen(cmd, cwd=ROOT, env=worker_env(env), stdout=log, stderr=log)
    try:
        yield proc
    finally:
        stop(proc)


def wait_port(port: int, proc: subprocess.Popen[bytes], log_path: Path) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{proc.args!r} exited:\n{log_path.read_text()[-3000:]}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listens on {port}:\n{log_path.read_text()[-3000:]}")


def run_one(
    n: int,
    mode: str,
    args: argparse.Namespace,
    env: dict[str, str],
    logs: Path,
    media: str = FORMAT,
) -> Row:
    me = [sys.executable, "-m", "bench.bridge_load"]
    sim_port, bridge_port = free_port(), free_port()
    with ExitStack() as stack:
        log = logs / f"sim-{mode}-{n}.log"
        cmd = [*me, "--serve-simulator", str(sim_port), "--deflate", args.deflate]
        sim = stack.enter_context(spawn(cmd, env, log))
        wait_port(sim_port, sim, log)
        pids = {"sim": sim.pid, "client": os.getpid(), "host": 0, "steal": -1}
        if mode == "on":
            name, log = f"bench-load-{uuid.uuid4().hex[:8]}@localhost", logs / f"worker-{n}.log"
            cmd = [
                sys.executable,
                "-m",
                "celery",
                "-A",
                "workers.app",
                "worker",
                "-n",
                name,
                "-Q",
                WORKER_QUEUES,
                "--pool",
                "threads",
                "-c",
                "4",
                "--loglevel",
                "WARNING",
                "--without-gossip",
                "--without-mingle",
                "--without-heartbeat",
            ]
            pids["worker"] = (worker := stack.enter_context(spawn(cmd, env, log))).pid
            app = broker_app(Settings(**env))  # type: ignore[arg-type]
            wait_for_ping(app, name, worker, log)
            app.close()
        log, url = logs / f"bridge-{mode}-{n}.log", f"ws://127.0.0.1:{sim_port}/v1/realtime"
        cmd = [
            *me,
            "--serve-bridge",
            str(bridge_port),
            "--realtime-url",
            url,
            "--persistence",
            mode,
            "--deflate",
            args.deflate,
        ]
        if media.endswith("~transcode"):
            cmd.append("--transcode")
        pids["bridge"] = (bridge := stack.enter_context(spawn(cmd, env, log))).pid
        if args.pin:
            os.sched_setaffinity(bridge.pid, {0})  # alone there; the rest stays on CPU 1
        wait_port(bridge_port, bridge, log)
        with asyncio.Runner(loop_factory=LOOP) as runner:
            return runner.run(drive(n, mode, bridge_port, args.seconds, pids, args.seed, media))


def conditions(args: argparse.Namespace, prefix: str) -> dict[str, Any]:
    s = Settings()
    return {
        "python": f"{platform.python_implementation()} {platform.python_version()}",
        "cpus": os.cpu_count(),
        "load avg at start": " ".join(f"{x:.2f}" for x in os.getloadavg()),
        "servers": f"uvicorn {uvicorn.__version__} (ws auto = websockets-sansio), websockets "
        f"{websockets_version}, {'uvloop' if uvloop else 'asyncio'} loop in every process",
        "topology": "bridge: 1 subprocess (uvicorn, tune_gc); simulator: 1 subprocess "
        "(RealtimeSimulator pace=True, 20 ms deltas); the N clients: this process",
        "permessage-deflate": f"{args.deflate} on both legs (caller-bridge and bridge-model)",
        "formats": "caller raw/lpcm16 16 kHz (640 B/frame) -> model audio/pcm 24 kHz (960 B); "
        "bot audio/pcm 24 kHz -> caller 16 kHz; server VAD in the simulator",
        "workload": f"{FRAME_MS} ms frames both ways, caller on absolute deadlines; 3-8 digit "
        f"utterances + silence; starts over {RAMP_S:g} s, window opens {WARMUP_S:g} s after "
        f"the last start, {args.seconds:g} s measured, then userStream.stop + hangup",
        "persistence on": f"Redis storage + Celery persister (save interval "
        f"{s.save_interval_ms} ms, max batch {s.persist_max_batch}) -> {args.redis_url}, "
        f"prefix {prefix}; 1 worker -Q {WORKER_QUEUES} --pool threads -c 4",
        "persistence off": "memory storage; persister save/save_now/end do nothing "
        "(no state copy, no publisher work, no broker); no worker",
        "latency": "every frame of the window, exact p50/p99/max, kept in the bridge process; "
        "relay = the bridge's metric (bridge code gets message -> send done); send = "
        "sender's send -> send done",
        "loop lag": f"bridge event loop: lateness of a {TICK_MS} ms sleep",
        "pinning": "bridge alone on CPU 0; simulator, worker, clients and a private "
        "redis-server on CPU 1"
        if args.pin
        else "none (every process on every CPU)",
        "cpu": f"% of one CPU per process (host: whole machine; steal: what the hypervisor "
        "took from this machine's CPUs), user+sys over the window "
        f"({'psutil' if psutil else '/proc'})",
    }


def fmt(value: Any, digits: int = 2) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def verdict(rows: list[Row]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for kind, prefix in (("relay", ""), ("send", "sent_")):
        for mode in sorted({r.persistence for r in rows}):
            passing = [r.calls for r in rows if r.persistence == mode and r.ok(prefix)]
            out[f"largest N, {kind} p99 <= {LIMIT_MS:g} ms, {mode}"] = max(passing, default=None)
        at = {r.persistence: r for r in rows if r.calls == 100}
        for d in DIRECTIONS:
            p99 = {mode: r.ms[prefix + d]["p99"] for mode, r in at.items()}
            out |= {f"N=100 {kind} {d} p99 ms, {mode}": v for mode, v in p99.items()}
            on, off = p99.get("on"), p99.get("off")
            if on is not None and off is not None:
                out[f"N=100 {kind} {d} p99 added by persistence"] = on - off
    return out


def print_report(cond: dict[str, Any], rows: list[Row], result: dict[str, Any]) -> None:
    for key, value in cond.items():
        print(f"{key:>17}: {value}")
    line = (
        "{:>4} {:>4} {:>9} {:>6} |{:>6}{:>6}{:>6} |{:>7}{:>7}{:>7} |{:>7}{:>6}{:>5} "
        "{:>7}{:>5}{:>5}{:>5}{:>5} {:>6} {:>7}"
    )
    print(
        "\n"
        + line.format(
            "N",
            "pers",
            "direction",
            "frames",
            "relay",
            "p99",
            "max",
            "send",
            "p99",
            "max",
            "lag99",
            "load",
            "live",
            "bridge",
            "sim",
            "cli",
            "wrk",
            "host",
            "clag99",
            "ok",
        )
    )
    print(line.format(*[""] * 4, "p50", "", "", "p50", *[""] * 5, *["cpu%"] * 5, "", "rel/snd"))
    for r in rows:
        ok = "/".join("yes" if r.ok(p) else "NO" for p in ("", "sent_"))
        cpu = [fmt(r.cpu_pct.get(k), 0) for k in ("bridge", "sim", "client", "worker", "host")]
        for d in DIRECTIONS:
            m, s = r.ms[d], r.ms["sent_" + d]
            sent = [fmt(s[k], 1) for k in ("p50", "p99", "max")]
            print(
                line.format(
                    r.calls,
                    r.persistence,
                    d,
                    m["count"],
                    fmt(m["p50"]),
                    fmt(m["p99"]),
                    fmt(m["max"], 1),
                    *sent,
                    fmt(r.ms["loop_lag"]["p99"], 1),
                    fmt(r.load1),
                    r.streaming,
                    *cpu,
                    fmt(r.ms["client_lag"]["p99"], 1),
                    ok,
                )
            )
        for failure in r.failures:
            print(f"      failure: {failure}")
        if r.persistence == "on":
            print(f"      persister at window end: {r.persister}")
    print(
        "\n(ms; live = calls streaming when the window opened; clag99 = p99 of how late the "
        "clients sent their frames; ok = p99 <= 20 ms both ways, by relay / by send)\n"
    )
    for key, value in result.items():
        print(f"{key:>42}: {value if isinstance(value, int | None) else fmt(value, 3)}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", help="comma-separated N (default 25,50,100,150,200)")
    parser.add_argument("--persistence", default="off,on", help="modes to run (off,on)")
    parser.add_argument("--seconds", type=float, help="measured window (default 20, quick 8)")
    parser.add_argument(
        "--redis-url", default=os.environ.get("REDIS_URL") or "redis://127.0.0.1:6379"
    )
    parser.add_argument(
        "--deflate",
        choices=("on", "off"),
        default="off",
        help="permessage-deflate on both WebSocket legs of the bridge "
        "(off: the bridge's default, WEBSOCKET_DEFLATE=false)",
    )
    parser.add_argument(
        "--pin",
        action="store_true",
        help="bridge alone on CPU 0, the rest (and a private redis-server) on "
        "CPU 1: the bridge's own cost without host contention",
    )
    parser.add_argument("--seed", type=int, default=100_000)
    parser.add_argument("--quick", action="store_true", help="N 25,100; 8 s")
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--serve-bridge", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--serve-simulator", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--realtime-url", help=argparse.SUPPRESS)
    parser.add_argument("--transcode", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument(
        "--format-calls",
        type=int,
        default=FORMAT_CALLS,
        help=f"N of the per-format runs (default {FORMAT_CALLS})",
    )
    parser.add_argument(
        "--formats",
        default=",".join(FORMATS_COMPARED),
        help=f"formats compared at N={FORMAT_CALLS}, persistence off "
        "('' to skip; '~transcode': µ-law through PCM16 24 kHz, the path it "
        "took before passthrough)",
    )
    args = parser.parse_args(argv)
    if args.serve_bridge:
        serve_bridge(
            args.serve_bridge,
            args.realtime_url,
            args.persistence,
            args.deflate == "on",
            args.transcode,
        )
        return 0
    if args.serve_simulator:
        with asyncio.Runner(loop_factory=LOOP) as runner:
            runner.run(serve_simulator(args.serve_simulator, args.deflate == "on"))
        return 0
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    args.seconds = args.seconds or (8.0 if args.quick else 20.0)
    calls = args.calls or ("25,100" if args.quick else "25,50,100,150,200")
    modes, prefix = args.persistence.split(","), f"bench:load:{uuid.uuid4().hex[:8]}:"
    with ExitStack() as stack:
        if args.pin:
            os.sched_setaffinity(0, {1})  # inherited by every process started from here
            args.redis_url = stack.enter_context(throwaway_redis())
        cond = conditions(args, prefix)
        rows = run_all(args, calls, modes, prefix)
        per_format = run_formats(args, [f for f in args.formats.split(",") if f])
    result = verdict(rows) | format_verdict(per_format)
    if args.json:
        doc = {
            "conditions": cond,
            "rows": [asdict(r) for r in rows],
            "formats": [asdict(r) for r in per_format],
            "result": result,
        }
        print(json.dumps(doc, indent=2))
    else:
        print_report(cond, rows, result)
        print_formats(per_format, result)
    return 0


def run_formats(args: argparse.Namespace, formats: list[str]) -> list[Row]:
    """N=FORMAT_CALLS calls in each format, persistence off: the audio path's own cost."""
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-load-") as tmp:
        env = {
            "ARCHIVE_DIR": str(Path(tmp) / "archive"),
            "ARCHIVE_URL": "",
            "VAD_MODE": "server",
            "SESSION_STORAGE_TYPE": "memory",
        }
        for media in formats:
            print(
                f"N={args.format_calls} {media}: load avg {os.getloadavg()[0]:.2f}",
                file=sys.stderr,
                flush=True,
            )
            rows.append(run_one(args.format_calls, "off", args, env, Path(tmp), media))
    return rows


CODEC_FRAMES = 20_000


def codec_us_per_frame(media: str) -> float:
    """CPU µs the audio path of one 20 ms frame each way costs in `media` (conversion and
    base64, as the bridge does them), measured here in a tight loop."""
    telephony: MediaFormat = media.split("~")[0]  # type: ignore[assignment]
    model_format = "audio/pcm" if media.endswith("~transcode") else model_format_for(telephony)
    converter = AudioConverter(telephony, model_format)
    frame = speech_frames("4", telephony, FRAME_MS)[0]
    delta = to_base64(
        speech_frames(
            "4", "raw/mulaw" if model_format == "audio/pcmu" else "raw/lpcm16_24", FRAME_MS
        )[0]
    )
    started = time.process_time()
    for _ in range(CODEC_FRAMES):
        to_base64(converter.to_model(frame))
        to_base64(converter.from_model(from_base64(delta)))
    return round((time.process_time() - started) / CODEC_FRAMES * 1e6, 2)


def format_verdict(rows: list[Row]) -> dict[str, Any]:
    by = {r.media: r for r in rows}
    out: dict[str, Any] = {f"cpu us/frame {m}": r.bridge_cpu_us_per_frame for m, r in by.items()}
    codec = {m: codec_us_per_frame(m) for m in by}
    out |= {f"audio path us/frame {m}": us for m, us in codec.items()}
    if codec.get("raw/mulaw") and codec.get("raw/mulaw~transcode"):
        out["mulaw audio path, passthrough / transcoding"] = round(
            codec["raw/mulaw"] / codec["raw/mulaw~transcode"], 3
        )
    now, before = by.get("raw/mulaw"), by.get("raw/mulaw~transcode")
    if now and before and now.bridge_cpu_us_per_frame and before.bridge_cpu_us_per_frame:
        out["mulaw cpu per frame, passthrough / transcoding"] = round(
            now.bridge_cpu_us_per_frame / before.bridge_cpu_us_per_frame, 3
        )
    for media, row in by.items():
        for direction in DIRECTIONS:
            out[f"N={row.calls} {media} relay {direction} p99 ms"] = row.ms[direction]["p99"]
    return out


def print_formats(rows: list[Row], result: dict[str, Any]) -> None:
    if not rows:
        return
    print(
        f"\nper telephony format, N={rows[0].calls}, persistence off (bridge CPU per relayed "
        "frame, both directions; the audio path alone: conversion + base64, one frame each "
        "way, tight loop; relay p99):"
    )
    for r in rows:
        print(
            f"  {r.media:<22} {fmt(r.bridge_cpu_us_per_frame, 1):>7} us/frame   audio path "
            f"{fmt(result.get(f'audio path us/frame {r.media}'), 1):>6} us   relay p99 "
            f"{fmt(r.ms['to_model']['p99'])} / {fmt(r.ms['to_caller']['p99'])} ms   "
            f"bridge cpu {fmt(r.cpu_pct.get('bridge'), 0)}%   steal "
            f"{fmt(r.cpu_pct.get('steal'), 0)}%   failures {len(r.failures)}"
        )
    for key in (
        "mulaw audio path, passthrough / transcoding",
        "mulaw cpu per frame, passthrough / transcoding",
    ):
        if key in result:
            print(f"  {key}: {result[key]}")


def run_all(args: argparse.Namespace, calls: str, modes: list[str], prefix: str) -> list[Row]:
    rows: list[Row] = []
    try:
        with tempfile.TemporaryDirectory(prefix="bench-load-") as tmp:
            common = {
                "ARCHIVE_DIR": str(Path(tmp) / "archive"),
                "ARCHIVE_URL": "",
                "VAD_MODE": "server",
            }
            envs = {
                "off": common | {"SESSION_STORAGE_TYPE": "memory"},
                "on": common
                | {
                    "SESSION_STORAGE_TYPE": "redis",
                    "REDIS_URL": args.redis_url,
                    "CELERY_BROKER_URL": args.redis_url,
                    "SESSION_PREFIX": prefix,
                    "CELERY_KEY_PREFIX": prefix,
                },
            }
            for n in (int(x) for x in calls.split(",")):
                for mode in modes:
                    print(
                        f"N={n} persistence {mode}: load avg {os.getloadavg()[0]:.2f}",
                        file=sys.stderr,
                        flush=True,
                    )
                    rows.append(run_one(n, mode, args, envs[mode], Path(tmp)))
    finally:
        if "on" in modes:
            delete_prefix(args.redis_url, prefix)
    return rows


if __name__ == "__main__":
    sys.exit(main())
