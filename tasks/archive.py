"""Ending sessions and writing their archive records."""

from __future__ import annotations

import logging
from typing import Any

from celery import Task, shared_task

from sessions.archive import ArchiveRecord, ArchiveUnavailable
from sessions.codec import Snapshot, decode_state
from sessions.errors import CorruptSession, InvalidSessionData, RetryableError
from sessions.keys import check_conversation_id
from sessions.state import SessionStatus
from sessions.storage import ArchiveMark
from tasks import names, runtime
from tasks.runtime import TaskContext

log = logging.getLogger(__name__)

ARCHIVE_MAX_RETRIES = 3
ARCHIVE_RETRY_BACKOFF_MAX_S = 8  # later attempts come from the sweep's overdue pass


def finish_session(
    ctx: TaskContext, conversation_id: str, reason: str, final_snapshot: Any = None
) -> str:
    """Store the final state as ENDED (unless another owner took over), then queue the archive."""
    cid = check_conversation_id(conversation_id)
    fenced_below: int | None = None
    if final_snapshot is not None:
        snap = Snapshot.from_wire(final_snapshot)
        if snap.conversation_id != cid:
            raise InvalidSessionData(f"final snapshot is for {snap.conversation_id!r}, not {cid!r}")
        state = decode_state(cid, snap.fields)
        state.end(reason)
        ctx.store.save(Snapshot.of(state))
        fenced_below = snap.epoch
    stored = ctx.store.load_record(cid)
    if stored is None:
        log.warning("end_session %s: no such session", cid)
        return "missing"
    if stored.state.status is not SessionStatus.ENDED:
        if fenced_below is not None and stored.state.epoch > fenced_below:
            log.info(
                "end_session %s: fenced, resumed elsewhere (epoch %d)", cid, stored.state.epoch
            )
            ctx.store.add_event("ends_fenced")
            return "fenced"
        ctx.store.end(cid, reason)
    if not stored.archived:
        ctx.dispatcher.send(names.ARCHIVE_SESSION, cid)
    log.info("end_session %s: ended (%s)", cid, reason)
    return "ended"


def archive_one(ctx: TaskContext, conversation_id: str) -> str:
    """Write one ended session's record, then flag it archived; safe to repeat or race."""
    lock = f"archive:{conversation_id}"
    token = ctx.store.acquire_lock(lock, ttl_s=ctx.settings.task_time_limit_s + 5)
    if token is None:
        return "in_progress"
    try:
        return _write_and_mark(ctx, conversation_id)
    finally:
        ctx.store.release_lock(lock, token)


def _write_and_mark(ctx: TaskContext, conversation_id: str) -> str:
    try:
        stored = ctx.store.load_record(conversation_id)
    except CorruptSession as exc:
        ctx.store.add_event("archive_corrupt")
        log.error("archive_session %s: %s", conversation_id, exc)
        return "corrupt"
    if stored is None:
        return "missing"
    if stored.archived:
        ctx.store.mark_archived(conversation_id, 0.0)
        return ArchiveMark.ALREADY.value
    if stored.state.status is not SessionStatus.ENDED:
        return ArchiveMark.NOT_ENDED.value
    state = stored.state
    record = ArchiveRecord.of(state)
    try:
        ctx.sink.write(record)
    except ArchiveUnavailable:
        ctx.store.add_event("archive_failures")
        raise
    mark = ctx.store.mark_archived(
        state.conversation_id, record.duration_s, record.usage.event_counters()
    )
    return "archived" if mark is ArchiveMark.MARKED else mark.value


def archive_many(ctx: TaskContext, conversation_ids: list[str]) -> tuple[dict[str, int], list[str]]:
    """Archive each id; return outcome counts and the ids whose sink write failed."""
    counts: dict[str, int] = {}
    failed: list[str] = []
    for cid in conversation_ids:
        try:
            outcome = archive_one(ctx, check_conversation_id(cid))
        except RetryableError as exc:
            log.warning("archive_session %s: %s", cid, exc)
            failed.append(cid)
            outcome = "failed"
        counts[outcome] = counts.get(outcome, 0) + 1
    return counts, failed


@shared_task(
    name=names.END_SESSION,
    bind=True,
    autoretry_for=(RetryableError,),
    retry_backoff=True,
    retry_backoff_max=ARCHIVE_RETRY_BACKOFF_MAX_S,
    max_retries=None,
)
def end_session(
    self: Task, conversation_id: str, reason: str, final_snapshot: dict[str, Any] | None = None
) -> str:
    """End a session (terminal) with its final state, then archive it."""
    return finish_session(runtime.context(), conversation_id, reason, final_snapshot)


@shared_task(
    name=names.ARCHIVE_SESSION,
    bind=True,
    autoretry_for=(RetryableError,),
    retry_backoff=True,
    retry_backoff_max=ARCHIVE_RETRY_BACKOFF_MAX_S,
    max_retries=ARCHIVE_MAX_RETRIES,
)
def archive_session(self: Task, conversation_id: str) -> str:
    """Write the call record to the archive sink; idempotent by conversation id."""
    outcome = archive_one(runtime.context(), check_conversation_id(conversation_id))
    log.info("archive_session %s: %s", conversation_id, outcome)
    return outcome


@shared_task(name=names.ARCHIVE_SESSIONS, bind=True, max_retries=ARCHIVE_MAX_RETRIES)
def archive_sessions(self: Task, conversation_ids: list[str]) -> dict[str, int]:
    """Archive a batch; only the ids that failed are retried."""
    counts, failed = archive_many(runtime.context(), conversation_ids)
    log.info("archive_sessions: %d ids: %s", len(conversation_ids), counts)
    if failed:
        countdown = min(ARCHIVE_RETRY_BACKOFF_MAX_S, 2**self.request.retries)
        raise self.retry(args=[failed], countdown=countdown)
    return counts
