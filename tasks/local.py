"""The embedded default: the same task functions, run by one background thread in-process."""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable
from typing import Any

from sessions.errors import RetryableError
from tasks import names
from tasks.archive import archive_many, archive_one, finish_session
from tasks.maintenance import refresh_statistics, sweep
from tasks.persistence import apply_batch
from tasks.runtime import TaskContext

log = logging.getLogger(__name__)

TaskFn = Callable[..., Any]
TASKS: dict[str, TaskFn] = {
    names.SAVE_SESSIONS: apply_batch,
    names.END_SESSION: finish_session,
    names.ARCHIVE_SESSION: archive_one,
    names.ARCHIVE_SESSIONS: lambda ctx, ids: archive_many(ctx, ids)[0],
    names.SWEEP_EXPIRED_SESSIONS: sweep,
    names.COMPUTE_STATISTICS: refresh_statistics,
}
RETRY_DELAYS_S = (0.5, 1, 2, 4, 8)


class LocalExecutor:
    """A `Dispatcher` that runs tasks on its own thread, with retries and a local schedule.

    It also plays beat: the sweep every CLEANUP_INTERVAL and statistics every
    STATISTICS_INTERVAL, so the embedded default behaves like the full stack.
    """

    def __init__(self) -> None:
        self.context: TaskContext | None = None
        self._queue: queue.Queue[tuple[str, tuple[Any, ...], int] | None] = queue.Queue()
        self._idle = threading.Condition()
        self._busy = 0
        self._timers: list[threading.Timer] = []
        self._thread = threading.Thread(target=self._run, name="local-tasks", daemon=True)
        self.completed = 0
        self.failed = 0

    def start(self, context: TaskContext, schedule: bool = True) -> None:
        """Run tasks against `context`; with `schedule`, also the periodic sweep and statistics."""
        self.context = context
        self._thread.start()
        if schedule:
            settings = context.settings
            self._every(settings.cleanup_interval_s, names.SWEEP_EXPIRED_SESSIONS)
            self._every(settings.statistics_interval_s, names.COMPUTE_STATISTICS)

    def send(self, task_name: str, *args: Any) -> None:
        """Queue a task by name (never blocks)."""
        if task_name not in TASKS:
            raise ValueError(f"unknown task {task_name!r}")
        with self._idle:
            self._busy += 1
        self._queue.put((task_name, args, 0))

    def drain(self, timeout_s: float = 10) -> bool:
        """Wait until every queued task (and what it queued) has run; False on timeout."""
        with self._idle:
            return self._idle.wait_for(lambda: self._busy == 0, timeout=timeout_s)

    def close(self, timeout_s: float = 10) -> bool:
        """Finish queued work (up to `timeout_s`) and stop."""
        for timer in self._timers:
            timer.cancel()
        drained = self.drain(timeout_s)
        self._queue.put(None)
        if self._thread.is_alive():
            self._thread.join(timeout=timeout_s)
        return drained

    def _every(self, interval_s: float, task_name: str) -> None:
        def fire() -> None:
            self.send(task_name)
            self._every(interval_s, task_name)

        timer = threading.Timer(interval_s, fire)
        timer.daemon = True
        self._timers = [t for t in self._timers if t.is_alive()] + [timer]
        timer.start()

    def _run(self) -> None:
        while (item := self._queue.get()) is not None:
            name, args, attempt = item
            retried = False
            try:
                assert self.context is not None
                TASKS[name](self.context, *args)
                self.completed += 1
            except RetryableError as exc:
                retried = self._retry(name, args, attempt, exc)
            except Exception:
                self.failed += 1
                log.exception("local task %s failed", name)
            if not retried:
                with self._idle:
                    self._busy -= 1
                    self._idle.notify_all()

    def _retry(self, name: str, args: tuple[Any, ...], attempt: int, exc: Exception) -> bool:
        if attempt >= len(RETRY_DELAYS_S):
            self.failed += 1
            log.error("local task %s gave up after %d attempts: %s", name, attempt + 1, exc)
            return False
        delay_s = RETRY_DELAYS_S[attempt]
        log.warning("local task %s: %s; retrying in %.1f s", name, exc, delay_s)
        timer = threading.Timer(delay_s, self._queue.put, args=[(name, args, attempt + 1)])
        timer.daemon = True
        timer.start()
        return True
