"""`SessionPersister`: state changes go to the task queue without touching the audio path.

`save(state)` runs on the event loop: it advances `seq`, takes a shallow frozen copy of
the state and records it as the session's latest (latest wins). It does no I/O and holds
a lock only for a dict assignment. A publisher thread wakes every SAVE_INTERVAL_MS (or at
once for lifecycle moments), swaps out everything pending, encodes it and sends it as
`save_sessions` batches (and `end_session` tasks). If the broker is slow or down, the
pending map stays bounded by the number of live sessions (one entry each) and is retried
with backoff; nothing is dropped unless the bound is hit, and then it is counted and logged.

Items added to `conversation_history`, `function_calls` and the metadata dicts must not be
mutated in place after they are added (add a new item instead): the frozen copy shares them.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import threading
import time
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from pydantic_core import to_json

from sessions.codec import snapshot_wire
from sessions.state import SessionState
from sessions.statistics import percentile
from tasks import names
from tasks.runtime import Dispatcher

log = logging.getLogger(__name__)
GC_GEN0_THRESHOLD = 20_000
GC_GEN1_THRESHOLD = 20
GC_GEN2_THRESHOLD = 50
ENCODE_BETWEEN_YIELDS = 8  # snapshots encoded (~20 µs each) between chances for the loop


class _Pending(NamedTuple):
    """A session's latest frozen state and, for an end, its reason."""

    state: dict[str, Any]
    end_reason: str | None = None


@dataclass
class CloseReport:
    """What `close` could not send before its deadline."""

    drained: bool
    unsent: list[str] = field(default_factory=list)


@dataclass
class PersisterMetrics:
    """Numbers a bridge can export."""

    live_sessions: int
    dirty: int
    backlog: int
    batches_sent: int
    snapshots_sent: int
    ends_sent: int
    publish_failures: int
    dropped: int
    publish_latency_ms: dict[str, float | None]
    last_error: str | None


FrozenState = dict[str, Any]
_MUTABLE_LISTS = ("conversation_history", "function_calls", "audio_buffer")
_MUTABLE_DICTS = ("metadata", "audio_metadata")


def freeze(state: SessionState) -> FrozenState:
    """The state's field values, in containers that later changes to `state` do not touch."""
    values = dict(vars(state))
    for name in _MUTABLE_LISTS:
        values[name] = list(values[name])
    for name in _MUTABLE_DICTS:
        values[name] = dict(values[name])
    return values


def tune_gc(gen0_threshold: int = GC_GEN0_THRESHOLD) -> None:
    """GC settings for a bridge process, called once by the server after imports.

    Every save allocates a few containers; with CPython's default threshold (700) about one
    save in a hundred pays for a young-generation collection, and full collections walk
    every object imported at start-up (frozen here) and every live call's state (made
    rarer here).
    """
    gc.freeze()
    gc.set_threshold(gen0_threshold, GC_GEN1_THRESHOLD, GC_GEN2_THRESHOLD)


def encode_politely(states: Iterable[FrozenState]) -> list[dict[str, Any]]:
    """The wire forms of `states`, letting the event loop's thread run between a few of them.

    Encoding holds the GIL; without these pauses the loop could wait a whole switch
    interval (5 ms) for it whenever a timer or a frame wakes it.
    """
    wire = []
    for index, state in enumerate(states):
        if index % ENCODE_BETWEEN_YIELDS == 0:
            time.sleep(0)  # releases the GIL; a waiting thread takes it
        wire.append(snapshot_wire(state))
    return wire


class SessionPersister:
    """Coalesces state changes per session and publishes them in batches from a thread."""

    def __init__(
        self,
        dispatcher: Dispatcher,
        *,
        save_interval_ms: int = 200,
        max_batch: int = 50,
        max_pending: int = 100_000,
        backoff_initial_s: float = 0.1,
        backoff_max_s: float = 5.0,
    ) -> None:
        self.dispatcher = dispatcher
        self.save_interval_s = save_interval_ms / 1000
        self.max_batch = max_batch
        self.max_pending = max_pending
        self.backoff_initial_s = backoff_initial_s
        self.backoff_max_s = backoff_max_s
        self._lock = threading.Lock()
        self._pending: dict[str, _Pending] = {}
        self._in_flight: dict[str, _Pending] = {}
        self._live: set[str] = set()
        self._ending: set[str] = set()
        self._tasks: list[tuple[str, tuple[Any, ...]]] = []  # other tasks, sent in order
        self._wake = threading.Event()
        self._idle = threading.Condition()
        self._stopping = False
        self._deadline = float("inf")
        self._retry_at = 0.0
        self._consecutive_failures = 0
        self._latencies_ms: deque[float] = deque(maxlen=512)
        self._counts = {"batches": 0, "snapshots": 0, "ends": 0, "failures": 0, "dropped": 0}
        self._last_error: str | None = None
        self._thread = threading.Thread(target=self._run, name="session-persister", daemon=True)

    # -- the event loop side ----------------------------------------------------

    def start(self) -> None:
        """Start the publisher thread."""
        self._thread.start()

    def save(self, state: SessionState) -> None:
        """Mark a session dirty with its current state (latest wins); O(1), no I/O."""
        state.seq += 1
        self._put(state.conversation_id, _Pending(freeze(state)))

    def save_now(self, state: SessionState) -> None:
        """Like `save`, and publish without waiting for the next interval."""
        self.save(state)
        self._wake.set()

    def end(self, state: SessionState, reason: str) -> None:
        """End the session (terminal) and publish its final state with `end_session` at once."""
        state.end(reason)
        state.seq += 1
        self._put(state.conversation_id, _Pending(freeze(state), reason))
        self._wake.set()

    def track(self, conversation_id: str) -> None:
        """A call is live on this instance (counted until it ends or leaves)."""
        with self._lock:
            self._live.add(conversation_id)

    def forget(self, conversation_id: str, *, stored: bool = True) -> None:
        """The call left this instance; when its state is `stored`, drop its older unsent saves."""
        with self._lock:
            pending = self._pending.get(conversation_id)
            if stored and pending is not None and pending.end_reason is None:
                del self._pending[conversation_id]
            self._live.discard(conversation_id)

    def archive(self, conversation_id: str) -> None:
        """Queue the archive of a call ended in storage (sent by the publisher thread)."""
        with self._lock:
            self._tasks.append((names.ARCHIVE_SESSION, (conversation_id,)))
        self._wake.set()

    async def aflush(self, timeout_s: float = 5.0) -> bool:
        """`flush` without blocking the event loop."""
        return await asyncio.to_thread(self.flush, timeout_s)

    async def aclose(self, timeout_s: float = 5.0) -> CloseReport:
        """`close` without blocking the event loop."""
        return await asyncio.to_thread(self.close, timeout_s)

    def _put(self, conversation_id: str, item: _Pending) -> None:
        with self._lock:
            if conversation_id in self._ending:
                return  # nothing follows an end
            current = self._pending.get(conversation_id)
            if current is None and len(self._pending) >= self.max_pending:
                self._counts["dropped"] += 1
                log.error("persister backlog full (%d): dropped a save of %s",
                          self.max_pending, conversation_id)  # fmt: skip
                return
            self._pending[conversation_id] = item
            if item.end_reason is not None:
                self._live.discard(conversation_id)
                self._ending.add(conversation_id)

    # -- waiting and stopping ----------------------------------------------------

    def flush(self, timeout_s: float = 5.0) -> bool:
        """Publish now and wait until nothing is pending or in flight; False on timeout."""
        self._wake.set()
        with self._idle:
            return self._idle.wait_for(self._drained, timeout=timeout_s)

    def close(self, timeout_s: float = 5.0) -> CloseReport:
        """Send what can be sent within `timeout_s`, stop, and report what was not sent."""
        self._deadline = time.monotonic() + timeout_s
        self._stopping = True
        self._wake.set()
        if self._thread.is_alive():
            self._thread.join(timeout=timeout_s + 1)
        with self._lock:
            unsent = sorted(self._pending.keys() | self._in_flight.keys())
        if unsent:
            log.error("persister closed with %d sessions unsent: %s", len(unsent), unsent[:20])
        return CloseReport(drained=not unsent, unsent=unsent)

    def _drained(self) -> bool:
        with self._lock:
            return not self._pending and not self._in_flight and not self._tasks

    # -- the publisher thread -----------------------------------------------------

    def _run(self) -> None:
        while True:
            if not self._stopping:
                self._wake.wait(timeout=self.save_interval_s)
            self._wake.clear()
            now = time.monotonic()
            if self._stopping and (self._drained() or now >= self._deadline):
                break
            if now < self._retry_at:
                self._wake.wait(timeout=min(self._retry_at - now, self._deadline - now))
                continue
            self._publish_pending()
            with self._idle:
                self._idle.notify_all()
        with self._idle:
            self._idle.notify_all()

    def _publish_pending(self) -> None:
        self._publish_tasks()
        with self._lock:
            batch, self._pending = self._pending, {}
            self._in_flight = batch
        if not batch:
            return
        unsent = self._send(batch)
        with self._lock:
            for cid, item in unsent.items():
                if item.end_reason is not None:
                    self._pending[cid] = item  # an end supersedes any save
                else:
                    self._pending.setdefault(cid, item)  # a newer save made meanwhile wins
            for cid, item in batch.items():
                if item.end_reason is not None and cid not in unsent:
                    self._ending.discard(cid)
            self._in_flight = {}

    def _publish_tasks(self) -> None:
        with self._lock:
            tasks, self._tasks = self._tasks, []
        for index, (name, args) in enumerate(tasks):
            if not self._publish(name, *args):
                with self._lock:
                    self._tasks[:0] = tasks[index:]
                return

    def _send(self, batch: dict[str, _Pending]) -> dict[str, _Pending]:
        saves = [(cid, p) for cid, p in batch.items() if p.end_reason is None]
        ends = [(cid, p) for cid, p in batch.items() if p.end_reason is not None]
        for start in range(0, len(saves), self.max_batch):
            chunk = saves[start : start + self.max_batch]
            wire = to_json(encode_politely(p.state for _, p in chunk)).decode()
            if not self._publish(names.SAVE_SESSIONS, wire):
                return dict(saves[start:] + ends)
            self._counts["batches"] += 1
            self._counts["snapshots"] += len(chunk)
        for index, (cid, item) in enumerate(ends):
            final = snapshot_wire(item.state)
            if not self._publish(names.END_SESSION, cid, item.end_reason, final):
                return dict(ends[index:])
            self._counts["ends"] += 1
        return {}

    def _publish(self, task_name: str, *args: Any) -> bool:
        started = time.perf_counter()
        try:
            self.dispatcher.send(task_name, *args)
        except Exception as exc:  # noqa: BLE001 - any publish failure is retried
            self._failed(exc)
            return False
        self._latencies_ms.append((time.perf_counter() - started) * 1000)
        self._consecutive_failures = 0
        self._retry_at = 0.0
        return True

    def _failed(self, exc: Exception) -> None:
        self._counts["failures"] += 1
        self._consecutive_failures += 1
        delay_s = min(
            self.backoff_max_s, self.backoff_initial_s * 2 ** (self._consecutive_failures - 1)
        )
        self._retry_at = time.monotonic() + delay_s
        self._last_error = f"{type(exc).__name__}: {exc}"
        log.warning("persister publish failed (%s); retrying in %.2f s", self._last_error, delay_s)

    # -- metrics -------------------------------------------------------------------

    def metrics(self) -> PersisterMetrics:
        """A consistent-enough view for export (read without stopping the publisher)."""
        with self._lock:
            dirty, live, in_flight = len(self._pending), len(self._live), len(self._in_flight)
        latencies = sorted(self._latencies_ms)
        return PersisterMetrics(
            live_sessions=live,
            dirty=dirty,
            backlog=dirty + in_flight,
            batches_sent=self._counts["batches"],
            snapshots_sent=self._counts["snapshots"],
            ends_sent=self._counts["ends"],
            publish_failures=self._counts["failures"],
            dropped=self._counts["dropped"],
            publish_latency_ms={
                "p50": percentile(latencies, 0.5),
                "p99": percentile(latencies, 0.99),
                "max": latencies[-1] if latencies else None,
            },
            last_error=self._last_error,
        )
