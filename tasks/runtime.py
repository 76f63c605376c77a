"""What task code runs against: one store, one archive sink and a dispatcher per process."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from sessions.archive import ArchiveSink
from sessions.factory import build_sink, build_sync_store
from sessions.settings import Settings
from sessions.storage import SyncSessionStore

log = logging.getLogger(__name__)


class Dispatcher(Protocol):
    """Sends a task by name: to the broker, or to the in-process executor."""

    def send(self, task_name: str, *args: Any) -> None: ...


class CeleryDispatcher:
    """Sends through a Celery app (default: the current one), so routes apply.

    `retry=False` fails at once when the broker is unreachable, for callers that keep
    their own backlog (the bridge's persister) rather than block on publish retries.
    """

    def __init__(self, app: Any = None, retry: bool = True) -> None:
        self.app = app
        self.retry = retry

    def send(self, task_name: str, *args: Any) -> None:
        from celery import current_app

        from tasks.redaction import describe_args

        app = self.app or current_app
        app.send_task(task_name, args=list(args), retry=self.retry,
                      argsrepr=describe_args(task_name, args), kwargsrepr="{}")  # fmt: skip


@dataclass
class TaskContext:
    """The clients task code uses; created once per worker process."""

    settings: Settings
    store: SyncSessionStore
    sink: ArchiveSink
    dispatcher: Dispatcher

    @classmethod
    def from_settings(cls, settings: Settings) -> TaskContext:
        """Redis store and the configured sink, dispatching through Celery."""
        store = build_sync_store(settings)
        return cls(settings, store, build_sink(settings), CeleryDispatcher())

    def close(self) -> None:
        """Release connections."""
        close = getattr(self.store, "close", None)
        if close is not None:
            close()
        self.sink.close()


_lock = threading.Lock()
_context: TaskContext | None = None
_factory: Callable[[], TaskContext] | None = None


def set_factory(factory: Callable[[], TaskContext]) -> None:
    """How to build the context on first use in a process."""
    global _factory
    _factory = factory


def configure(context: TaskContext | None) -> None:
    """Use this context from now on (None forgets it, e.g. after a fork)."""
    global _context
    with _lock:
        _context = context


def context() -> TaskContext:
    """The process's context, built on first use."""
    global _context
    with _lock:
        if _context is None:
            if _factory is None:
                raise RuntimeError("task context not configured: start tasks through workers.app")
            _context = _factory()
            log.info("task context ready: sink %s", _context.sink.describe())
        return _context
