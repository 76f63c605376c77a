"""The Celery app: `celery -A workers.app worker|beat|flower`."""

from __future__ import annotations

import logging
from typing import Any

from celery import Celery
from celery.signals import task_failure, worker_process_init, worker_process_shutdown

from sessions.settings import load_settings
from tasks import runtime
from tasks.redaction import RedactedTask, describe_args
from tasks.runtime import TaskContext

log = logging.getLogger("opus_sessions.worker")

app = Celery("opus_sessions", task_cls=RedactedTask)
app.config_from_object("celeryconfig")
app.conf.include = ["tasks.persistence", "tasks.archive", "tasks.maintenance"]

runtime.set_factory(lambda: TaskContext.from_settings(load_settings()))


@worker_process_init.connect
def _fresh_clients_after_fork(**_: Any) -> None:
    """A forked pool process builds its own clients on first use (never shares sockets)."""
    runtime.configure(None)


@worker_process_shutdown.connect
def _close_clients(**_: Any) -> None:
    try:
        runtime.context().close()
    except Exception:  # noqa: BLE001 - best effort at shutdown
        log.debug("closing task clients failed", exc_info=True)


@task_failure.connect
def _log_failure(sender: Any = None, task_id: str | None = None, exception: Any = None,
                 args: Any = None, **_: Any) -> None:  # fmt: skip
    name = getattr(sender, "name", "?")
    log.error("task %s[%s] failed: %r %s", name, task_id, exception, describe_args(name, args))
