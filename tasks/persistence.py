"""Saving batches of session snapshots with the compare-and-set script."""

from __future__ import annotations

import json
import logging
from typing import Any

from celery import Task, shared_task
from pydantic import TypeAdapter, ValidationError

from sessions.codec import Snapshot
from sessions.errors import InvalidSessionData, RetryableError
from tasks import names, runtime
from tasks.runtime import TaskContext

log = logging.getLogger(__name__)

SAVE_RETRY_BACKOFF_MAX_S = 5  # stays well under the broker visibility timeout


SNAPSHOTS = TypeAdapter(list[Snapshot])


def parse_batch(batch: Any) -> tuple[list[Snapshot], int]:
    """The valid snapshots of a batch and how many were invalid.

    A batch is a list of snapshots, or (as the persister sends it) their JSON text: parsed
    and validated in one pass by pydantic-core, which is several times faster than decoding
    a large list through the broker's JSON hooks and validating item by item.
    """
    if isinstance(batch, str):
        try:
            return SNAPSHOTS.validate_json(batch), 0
        except ValidationError:
            try:
                batch = json.loads(batch)
            except ValueError:
                raise InvalidSessionData("a batch must be a JSON list of snapshots") from None
    if not isinstance(batch, list):
        raise InvalidSessionData(f"a batch must be a list of snapshots, not {type(batch).__name__}")
    snapshots: list[Snapshot] = []
    invalid = 0
    for item in batch:
        try:
            snapshots.append(Snapshot.from_wire(item))
        except InvalidSessionData as exc:
            invalid += 1
            log.warning("save_sessions: dropped an invalid snapshot: %s", exc)
    return snapshots, invalid


def apply_batch(ctx: TaskContext, batch: Any) -> dict[str, int]:
    """Apply every valid snapshot of a batch in one pipeline; count applied, stale, invalid."""
    snapshots, invalid = parse_batch(batch)
    result = ctx.store.save_many(snapshots)
    ctx.store.add_event("snapshot_batches")
    if invalid:
        ctx.store.add_event("snapshots_invalid", invalid)
    outcome = {"applied": result.applied, "stale": result.stale, "merged": result.merged,
               "invalid": invalid}  # fmt: skip
    if result.merged:
        log.warning("save_sessions: %d fenced snapshots carried history the store lacked "
                    "(merged; calls reopened for their archive: %s)", result.merged,
                    ", ".join(result.reopened) or "none")  # fmt: skip
    for conversation_id in result.reopened:
        ctx.dispatcher.send(names.ARCHIVE_SESSION, conversation_id)
    log.debug("save_sessions: batch of %d: %s", len(snapshots) + invalid, outcome)
    return outcome


@shared_task(
    name=names.SAVE_SESSIONS,
    bind=True,
    autoretry_for=(RetryableError,),
    retry_backoff=True,
    retry_backoff_max=SAVE_RETRY_BACKOFF_MAX_S,
    retry_jitter=False,
    max_retries=None,
)
def save_sessions(self: Task, batch: str | list[dict[str, Any]]) -> dict[str, int]:
    """Apply a batch of snapshots; a replayed or older batch changes nothing."""
    return apply_batch(runtime.context(), batch)
