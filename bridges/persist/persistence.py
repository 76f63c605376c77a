"""Wiring the persister: Celery when REDIS_URL is set, the in-process executor otherwise."""

from __future__ import annotations

import logging
from dataclasses import dataclass

from celery import Celery

import celeryconfig
from bridges.persist.persister import CloseReport, SessionPersister
from sessions.factory import build_sink
from sessions.memory import MemorySessionStorage
from sessions.settings import Settings
from tasks.local import LocalExecutor
from tasks.runtime import CeleryDispatcher, Dispatcher, TaskContext

log = logging.getLogger(__name__)


@dataclass
class Persistence:
    """The persister and, in embedded mode, the executor running its tasks."""

    persister: SessionPersister
    executor: LocalExecutor | None = None

    def start(self) -> None:
        """Start publishing."""
        self.persister.start()

    async def aclose(self, timeout_s: float = 5.0) -> CloseReport:
        """Drain the persister, then let the local executor finish its work."""
        report = await self.persister.aclose(timeout_s)
        if self.executor is not None:
            self.executor.close(timeout_s)
        return report


def celery_client(settings: Settings) -> Celery:
    """A publishing-only Celery app with the workers' routes and serializers.

    It fails fast when the broker is unreachable (kombu's connection retries off): the
    persister keeps its own backlog and backoff, and a blocked publish would only delay it.
    """
    app = Celery("opus_sessions_bridge", set_as_current=False)
    conf = celeryconfig.build(settings)
    conf["broker_transport_options"] = {**conf["broker_transport_options"], "max_retries": 0}
    app.conf.update(conf)
    return app


def ping_broker(settings: Settings, timeout_s: float = 2.0) -> None:
    """Connect to the broker once, with the transport options the workers use (a Sentinel
    broker's master name, say); kombu's OperationalError (or OSError) if it does not answer."""
    from kombu.connection import Connection

    options = dict(celeryconfig.build(settings)["broker_transport_options"])
    options.update(socket_timeout=timeout_s, socket_connect_timeout=timeout_s)
    with Connection(settings.broker_url, connect_timeout=timeout_s,
                    transport_options=options) as conn:  # fmt: skip
        conn.ensure_connection(max_retries=1, interval_start=0, timeout=timeout_s)


def build_persistence(
    settings: Settings, memory: MemorySessionStorage | None = None, schedule: bool = True
) -> Persistence:
    """Celery dispatch for the Redis backend; for memory, the same tasks run in-process."""
    executor: LocalExecutor | None = None
    dispatcher: Dispatcher
    if settings.storage_backend == "memory":
        if memory is None:
            raise ValueError("embedded persistence needs the in-process memory storage")
        executor = LocalExecutor()
        executor.start(
            TaskContext(settings, memory.store, build_sink(settings), executor), schedule
        )
        dispatcher = executor
    else:
        dispatcher = CeleryDispatcher(celery_client(settings), retry=False)
    persister = SessionPersister(
        dispatcher,
        save_interval_ms=settings.save_interval_ms,
        max_batch=settings.persist_max_batch,
        max_pending=settings.persist_max_pending,
    )
    log.info("persister: %s dispatch", "local" if executor else "celery")
    return Persistence(persister, executor)
