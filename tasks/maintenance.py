"""The expiry sweep and the statistics task."""

from __future__ import annotations

import logging
import time
from typing import Any

from celery import Task, shared_task

from sessions.statistics import compute_statistics
from tasks import names, runtime
from tasks.runtime import TaskContext

log = logging.getLogger(__name__)

ARCHIVE_CHUNK = 100


def _send_archives(ctx: TaskContext, ids: list[str]) -> None:
    for start in range(0, len(ids), ARCHIVE_CHUNK):
        ctx.dispatcher.send(names.ARCHIVE_SESSIONS, ids[start : start + ARCHIVE_CHUNK])


def sweep(ctx: TaskContext, max_age_s: float) -> dict[str, Any]:
    """End idle sessions in bounded batches and queue their archives; one sweep at a time."""
    settings = ctx.settings
    token = ctx.store.acquire_lock("sweep", ttl_s=settings.task_time_limit_s + 5)
    if token is None:
        log.info("sweep: another sweep holds the lock; skipped")
        return {"skipped": True}
    ended = vanished = batches = 0
    more = False
    deadline = time.monotonic() + settings.task_time_limit_s / 3
    try:
        while True:
            result = ctx.store.expire_batch(max_age_s, settings.sweep_batch_size)
            batches += 1
            ended += len(result.ended)
            vanished += result.vanished
            _send_archives(ctx, result.ended)
            if len(result.ended) + result.vanished < settings.sweep_batch_size:
                break
            if time.monotonic() > deadline:
                more = True
                break
        overdue = ctx.store.archive_overdue(
            settings.archive_retry_after_s, settings.sweep_batch_size
        )
        _send_archives(ctx, overdue)
        ctx.store.add_event("sessions_expired", ended)
        ctx.store.mark_time("last_sweep_us")
    finally:
        ctx.store.release_lock("sweep", token)
    if more:
        ctx.dispatcher.send(names.SWEEP_EXPIRED_SESSIONS, max_age_s)
    outcome = {"ended": ended, "vanished": vanished, "batches": batches,
               "archive_retries": len(overdue), "continues": more}  # fmt: skip
    log.info("sweep: %s", outcome)
    return outcome


def refresh_statistics(ctx: TaskContext) -> dict[str, Any]:
    """Compute the statistics document and store it for readers."""
    document = compute_statistics(ctx.store)
    ctx.store.write_statistics(document)
    return document


@shared_task(name=names.SWEEP_EXPIRED_SESSIONS, bind=True)
def sweep_expired_sessions(self: Task, max_age_s: float | None = None) -> dict[str, Any]:
    """End sessions idle past `max_age_s` (default SESSION_TTL) as expired, and archive them."""
    ctx = runtime.context()
    return sweep(ctx, ctx.settings.session_ttl_s if max_age_s is None else max_age_s)


@shared_task(name=names.COMPUTE_STATISTICS, bind=True)
def compute_statistics_task(self: Task) -> dict[str, Any]:
    """Refresh the statistics document."""
    return refresh_statistics(runtime.context())
