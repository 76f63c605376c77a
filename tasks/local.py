"""The embedded default: the same task functions, run by one background thread in-process.

A task that fails with a `RetryableError` is tried again (RETRY_ATTEMPTS tries in all, the
next one RETRY_DELAY_S after the first failure, doubling up to RETRY_MAX_DELAY_S); the wait
happens off the thread, so other tasks run meanwhile. Other failures are not retried.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable
from typing import Any, NamedTuple

from tenacity import (
    RetryCallState,
    Retrying,
    retry_if_exception_type,
    stop_after_attempt,
    wait_exponential,
)

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
RETRY_ATTEMPTS = 6  # the first try and up to five retries,
RETRY_DELAY_S = 0.5  # 0.5 s after the first failure, then 1, 2, 4 and 8 s
RETRY_MAX_DELAY_S = 8.0


class _Job(NamedTuple):
    """A queued task: its name, its arguments and its tries so far."""

    name: str
    args: tuple[Any, ...]
    tries: RetryCallState


class LocalExecutor:
    """A `Dispatcher` that runs tasks on its own thread, with retries and a local schedule.

    It also plays beat: the sweep every CLEANUP_INTERVAL and statistics every
    STATISTICS_INTERVAL, so the embedded default behaves like the full stack. `retrying` is
    the retry policy: its `retry`, `stop` and `wait` decide each failed try's next one, which
    a timer queues again (the thread never sleeps through a wait).
    """

    def __init__(
        self, retry_attempts: int = RETRY_ATTEMPTS, retry_delay_s: float = RETRY_DELAY_S
    ) -> None:
        self.context: TaskContext | None = None
        self.retrying = Retrying(
            retry=retry_if_exception_type(RetryableError),
            stop=stop_after_attempt(retry_attempts),
            wait=wait_exponential(multiplier=retry_delay_s, max=RETRY_MAX_DELAY_S),
        )
        self._queue: queue.Queue[_Job | None] = queue.Queue()
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
        tries = RetryCallState(self.retrying, TASKS[task_name], args, {})
        self._queue.put(_Job(task_name, args, tries))

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
        while (job := self._queue.get()) is not None:
            if not self._attempt(job):
                with self._idle:
                    self._busy -= 1
                    self._idle.notify_all()

    def _attempt(self, job: _Job) -> bool:
        """Run one try of a task; True when it failed and another try is scheduled."""
        try:
            assert self.context is not None
            TASKS[job.name](self.context, *job.args)
        except Exception as exc:
            return self._retry(job, exc)
        self.completed += 1
        return False

    def _retry(self, job: _Job, exc: Exception) -> bool:
        """Schedule the next try of a failed task as `retrying` says; False when it is done."""
        tries = job.tries
        tries.set_exception((type(exc), exc, exc.__traceback__))
        if not self.retrying.retry(tries):
            self.failed += 1
            log.error("local task %s failed", job.name, exc_info=exc)
            return False
        if self.retrying.stop(tries):
            self.failed += 1
            log.error("local task %s gave up after %d attempts: %s",
                      job.name, tries.attempt_number, exc)  # fmt: skip
            return False
        delay_s = self.retrying.wait(tries)
        log.warning("local task %s: %s; retrying in %.1f s", job.name, exc, delay_s)
        tries.idle_for += delay_s
        tries.prepare_for_next_attempt()
        timer = threading.Timer(delay_s, self._queue.put, args=[job])
        timer.daemon = True
        timer.start()
        return True
