"""Hot-path benchmark: what `SessionPersister.save()` costs the bridge's event loop.

Run from the repository root: `python -m bench.hot_path [--quick] [--json]`.

For each broker state (up, paused with CLIENT PAUSE, down) a driver on the event loop keeps
1,000 live sessions changing (one transcript item and one `save()` per session every
`--change-ms`), while a 20 ms ticker records how late it wakes. The same driver and ticker
run once with persistence off (state changes, no `save()`), the baseline for the lag. The
broker is a private redis-server started for the run (nothing touches the shared Redis);
no worker consumes, so the publisher's cost is all that is measured.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import itertools
import json
import logging
import os
import platform
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import asdict, dataclass
from typing import Any

import redis

import celeryconfig
from bench._speech import Sentences
from bridges.persist.persistence import celery_client
from bridges.persist.persister import SessionPersister, tune_gc
from sessions.settings import Settings
from sessions.state import SessionState, SessionStatus
from sessions.statistics import percentile
from tasks.runtime import CeleryDispatcher
from tests.services import free_port, throwaway_redis

TICK_MS = 20
SENTENCES = itertools.cycle([Sentences().sentence() for _ in range(4096)])  # speech-like
MAX_TURNS = 40  # a call's transcript grows to this, then starts over (snapshots stay ~5 KB)


@dataclass
class Row:
    broker: str
    saves: int
    save_p50_us: float | None
    save_p99_us: float | None
    save_max_us: float | None
    lag_p50_ms: float | None
    lag_p99_ms: float | None
    lag_max_ms: float | None
    added_lag_p99_ms: float | None
    snapshots_sent: int
    publish_failures: int
    backlog_at_end: int


def live_sessions(count: int) -> list[SessionState]:
    return [
        SessionState(conversation_id=f"hot-{i:05d}", status=SessionStatus.ACTIVE)
        for i in range(count)
    ]


def noop(state: SessionState) -> None:
    """The control: a call that does nothing, timed exactly like `save()`."""


def change(state: SessionState) -> None:
    """One state change of a live call: a transcript item (restarting long transcripts)."""
    if len(state.conversation_history) >= MAX_TURNS:
        state.conversation_history = []
    state.add_conversation_item({"role": "user", "content": next(SENTENCES)})


async def ticker(stop: asyncio.Event, lags_ms: list[float]) -> None:
    """Sleep TICK_MS at a time and record how late each wake-up is."""
    loop = asyncio.get_running_loop()
    while not stop.is_set():
        due = loop.time() + TICK_MS / 1000
        await asyncio.sleep(TICK_MS / 1000)
        lags_ms.append((loop.time() - due) * 1000)


async def driver(
    stop: asyncio.Event,
    states: list[SessionState],
    save: Callable[[SessionState], None] | None,
    change_ms: int,
    save_ns: list[int],
) -> None:
    """Change every session once per `change_ms`, spread over 20 ms slices."""
    slices = max(1, change_ms // TICK_MS)
    per_slice = -(-len(states) // slices)
    index = 0
    while not stop.is_set():
        for state in states[index : index + per_slice]:
            change(state)
            if save is not None:
                started = time.perf_counter_ns()
                save(state)
                save_ns.append(time.perf_counter_ns() - started)
        index = (index + per_slice) % len(states)
        await asyncio.sleep(TICK_MS / 1000)


class GcWatch:
    """Pauses of the cyclic garbage collector (any thread) while a measurement runs."""

    def __init__(self) -> None:
        self.pauses_ms: list[float] = []
        self._started = 0.0

    def __call__(self, phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            self._started = time.perf_counter()
        else:
            self.pauses_ms.append((time.perf_counter() - self._started) * 1000)

    def __enter__(self) -> GcWatch:
        gc.callbacks.append(self)
        return self

    def __exit__(self, *exc: object) -> None:
        gc.callbacks.remove(self)


async def measure(
    seconds: float, states: list[SessionState], save: Callable[[SessionState], None] | None,
    change_ms: int,
) -> tuple[list[int], list[float]]:  # fmt: skip
    stop = asyncio.Event()
    save_ns: list[int] = []
    lags_ms: list[float] = []
    tasks = [
        asyncio.create_task(ticker(stop, lags_ms)),
        asyncio.create_task(driver(stop, states, save, change_ms, save_ns)),
    ]
    with GcWatch() as watch:
        await asyncio.sleep(seconds)
        stop.set()
        await asyncio.gather(*tasks)
    pauses = watch.pauses_ms
    gc_line = f"{len(pauses)} GC pauses, max {max(pauses, default=0):.1f} ms"
    print(f"  {'persistence off' if save is None else 'measured'}: {gc_line}", file=sys.stderr)
    return save_ns, lags_ms


@contextmanager
def paused(url: str, seconds: float) -> Iterator[None]:
    """Pause every client of the private broker for `seconds` (the pause then ends by itself)."""
    client = redis.Redis.from_url(url)
    client.execute_command("CLIENT", "PAUSE", str(int(seconds * 1000)), "ALL")
    client.close()
    yield


def stats_us(samples_ns: list[int]) -> tuple[float | None, float | None, float | None]:
    ordered = sorted(samples_ns)
    if not ordered:
        return None, None, None
    p50, p99 = percentile(ordered, 0.5), percentile(ordered, 0.99)
    return (
        None if p50 is None else p50 / 1000,
        None if p99 is None else p99 / 1000,
        ordered[-1] / 1000,
    )


def lag_ms(samples: list[float]) -> tuple[float | None, float | None, float | None]:
    ordered = sorted(samples)
    if not ordered:
        return None, None, None
    return percentile(ordered, 0.5), percentile(ordered, 0.99), ordered[-1]


async def run_state(
    name: str, broker_url: str, seconds: float, sessions: int, change_ms: int,
    settings: Settings, baseline_p99_ms: float | None,
) -> Row:  # fmt: skip
    client = celery_client(settings.model_copy(update={"celery_broker_url": broker_url}))
    persister = SessionPersister(
        CeleryDispatcher(client, retry=False),
        save_interval_ms=settings.save_interval_ms,
        max_batch=settings.persist_max_batch,
    )  # fmt: skip
    persister.start()
    states = live_sessions(sessions)
    save_ns, lags = await measure(seconds, states, persister.save, change_ms)
    metrics = persister.metrics()
    await asyncio.to_thread(persister.close, 0.5 if name != "up" else 10)
    s50, s99, smax = stats_us(save_ns)
    l50, l99, lmax = lag_ms(lags)
    added = None if l99 is None or baseline_p99_ms is None else l99 - baseline_p99_ms
    return Row(name, len(save_ns), s50, s99, smax, l50, l99, lmax, added,
               metrics.snapshots_sent, metrics.publish_failures, metrics.backlog)  # fmt: skip


async def run_all(args: argparse.Namespace) -> tuple[list[Row], dict[str, Any]]:
    settings = Settings()
    rows: list[Row] = []
    _, base_lags = await measure(args.seconds, live_sessions(args.sessions), None, args.change_ms)
    b50, b99, bmax = lag_ms(base_lags)
    rows.append(Row("off", 0, None, None, None, b50, b99, bmax, 0.0, 0, 0, 0))
    idle = SessionPersister(CeleryDispatcher(None), save_interval_ms=settings.save_interval_ms)
    alone_ns, _ = await measure(args.seconds / 2, live_sessions(args.sessions), idle.save,
                                args.change_ms)  # fmt: skip
    a50, a99, amax = stats_us(alone_ns)
    rows.append(Row("no I/O", len(alone_ns), a50, a99, amax, None, None, None, None, 0, 0, 0))
    noop_ns, _ = await measure(args.seconds / 2, live_sessions(args.sessions), noop, args.change_ms)
    n50, n99, nmax = stats_us(noop_ns)
    rows.append(Row("no-op", len(noop_ns), n50, n99, nmax, None, None, None, None, 0, 0, 0))
    with throwaway_redis() as broker:
        for name, ctx in (("up", nullcontext()), ("paused", paused(broker, args.seconds + 1))):
            with ctx:
                rows.append(await run_state(name, broker, args.seconds, args.sessions,
                                            args.change_ms, settings, b99))  # fmt: skip
    closed = f"redis://127.0.0.1:{free_port()}"
    rows.append(await run_state("down", closed, args.seconds, args.sessions, args.change_ms,
                                settings, b99))  # fmt: skip
    cond = {
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
        "sessions": args.sessions,
        "changes": f"each session every {args.change_ms} ms "
        f"({args.sessions * 1000 // args.change_ms} saves/s)",
        "seconds_per_state": args.seconds,
        "save_interval_ms": settings.save_interval_ms,
        "max_batch": settings.persist_max_batch,
        "compression": celeryconfig.COMPRESSION,
        "ticker_ms": TICK_MS,
        "broker": "private redis-server, no consumer; paused = CLIENT PAUSE ALL; "
        "down = a closed port",
        "switch_interval_s": sys.getswitchinterval(),
        "gc": f"thresholds {gc.get_threshold()}, startup objects frozen: {args.tune_gc}",
        "no I/O row": "save() with no publisher thread at all (its own cost)",
        "no-op row": "a call that does nothing, timed the same way (the machine's own tail)",
    }
    return rows, cond


def print_report(rows: list[Row], cond: dict[str, Any]) -> None:
    for key, value in cond.items():
        print(f"{key:>20}: {value}")
    print()
    head = ("broker", "saves", "save p50 µs", "p99 µs", "max µs", "lag p50 ms", "p99 ms",
            "max ms", "added p99 ms", "sent", "failures", "backlog")  # fmt: skip
    print(
        "{:>7} {:>8} {:>12} {:>8} {:>9} {:>11} {:>7} {:>7} {:>13} {:>7} {:>9} {:>8}".format(*head)
    )

    def f(value: float | None, digits: int) -> str:
        return "-" if value is None else f"{value:.{digits}f}"

    for r in rows:
        print(f"{r.broker:>7} {r.saves:>8} {f(r.save_p50_us, 1):>12} {f(r.save_p99_us, 1):>8}"
              f" {f(r.save_max_us, 0):>9} {f(r.lag_p50_ms, 2):>11} {f(r.lag_p99_ms, 2):>7}"
              f" {f(r.lag_max_ms, 1):>7} {f(r.added_lag_p99_ms, 2):>13} {r.snapshots_sent:>7}"
              f" {r.publish_failures:>9} {r.backlog_at_end:>8}")  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sessions", type=int, default=1000)
    parser.add_argument("--change-ms", type=int, default=200, help="per-session change period")
    parser.add_argument("--seconds", type=float, default=None, help="per state (default 10)")
    parser.add_argument("--quick", action="store_true", help="3 s per state")
    parser.add_argument("--json", action="store_true")
    parser.add_argument(
        "--no-tune-gc",
        dest="tune_gc",
        action="store_false",
        help="keep CPython's default GC thresholds (the bridge server tunes them)",
    )
    args = parser.parse_args(argv)
    args.seconds = args.seconds or (3.0 if args.quick else 10.0)
    # the rows report failures
    logging.getLogger("bridges.persist.persister").setLevel(logging.CRITICAL)
    if args.tune_gc:
        tune_gc()
    rows, cond = asyncio.run(run_all(args))
    if args.json:
        print(json.dumps({"conditions": cond, "rows": [asdict(r) for r in rows]}, indent=2))
    else:
        print_report(rows, cond)
    return 0


if __name__ == "__main__":
    sys.exit(main())
