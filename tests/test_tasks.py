"""Tasks on a real worker with the real Redis broker: saves, ends, archives, statistics."""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime, timedelta

import pytest
from celery import Celery

from sessions.codec import Snapshot
from sessions.redis_async import RedisSessionStorage
from sessions.state import SessionStatus
from sessions.storage import ClaimResult
from tasks import names
from tasks.runtime import TaskContext
from tests.conftest import wait_for
from tests.helpers import make_state, snapshot

pytestmark = pytest.mark.usefixtures("inthread_worker")


def claim(ctx: TaskContext, conversation_id: str) -> ClaimResult:
    """Resume as another bridge would (the async storage, on the same keys)."""

    async def run() -> ClaimResult:
        storage = RedisSessionStorage(ctx.settings.effective_redis_url, ctx.settings.session_prefix)
        try:
            return await storage.claim(conversation_id, 3600)
        finally:
            await storage.close()

    return asyncio.run(run())


def wire(*snapshots: Snapshot) -> list[dict[str, object]]:
    return [s.model_dump(mode="json") for s in snapshots]


def applied(ctx: TaskContext) -> int:
    return ctx.store.events().get("snapshots_applied", 0)


def test_a_batch_lands(worker_app: Celery, task_ctx: TaskContext) -> None:
    states = [make_state(f"c{i}", caller=f"+1555{i}") for i in range(50)]
    worker_app.send_task(names.SAVE_SESSIONS, args=[wire(*(Snapshot.of(s) for s in states))])
    wait_for(lambda: applied(task_ctx) == 50)
    stored = task_ctx.store.load_record("c7")
    assert stored is not None and stored.state.caller == "+15557"
    assert task_ctx.store.live_count() == 50


def test_an_older_replayed_batch_changes_nothing(worker_app: Celery, task_ctx: TaskContext) -> None:
    state = make_state("c1")
    newer = [snapshot(state, seq=9, caller="newer")]
    older = [snapshot(state, seq=3, caller="older"), snapshot(state, seq=9, caller="same seq")]
    worker_app.send_task(names.SAVE_SESSIONS, args=[wire(*newer)])
    wait_for(lambda: applied(task_ctx) == 1)
    worker_app.send_task(names.SAVE_SESSIONS, args=[wire(*older)])
    worker_app.send_task(names.SAVE_SESSIONS, args=[wire(*newer)])
    wait_for(lambda: task_ctx.store.events().get("snapshot_batches") == 3)
    assert applied(task_ctx) == 1 and task_ctx.store.events()["snapshots_stale"] == 3
    stored = task_ctx.store.load_record("c1")
    assert stored is not None and (stored.state.caller, stored.state.seq) == ("newer", 9)


@pytest.mark.parametrize("form", ["list", "json text"])
def test_invalid_snapshots_are_counted_in_either_batch_form(
    worker_app: Celery, task_ctx: TaskContext, form: str
) -> None:
    good = [Snapshot.of(make_state(f"g{i}")).model_dump(mode="json") for i in range(3)]
    batch = [good[0], {"conversation_id": "bad id!"}, good[1], {"nonsense": True}, good[2]]
    sent: object = batch if form == "list" else json.dumps(batch)
    worker_app.send_task(names.SAVE_SESSIONS, args=[sent])
    wait_for(lambda: task_ctx.store.events().get("snapshots_invalid") == 2)
    assert applied(task_ctx) == 3 and task_ctx.store.live_count() == 3


def test_a_batch_that_is_not_json_fails_without_touching_anything(
    worker_app: Celery, task_ctx: TaskContext
) -> None:
    worker_app.send_task(names.SAVE_SESSIONS, args=["[{not json"])
    worker_app.send_task(names.SAVE_SESSIONS, args=[wire(Snapshot.of(make_state("after")))])
    wait_for(lambda: applied(task_ctx) == 1)
    assert task_ctx.store.live_count() == 1 and "snapshot_batches" in task_ctx.store.events()


def test_end_session_stores_the_final_state_ended_and_archives_it(
    worker_app: Celery, task_ctx: TaskContext
) -> None:
    state = make_state("c1")
    state.add_conversation_item({"role": "user", "content": "bye"})
    task_ctx.store.save(Snapshot.of(state))
    state.add_conversation_item({"role": "assistant", "content": "goodbye"})
    final = Snapshot.of(state).model_dump(mode="json")
    worker_app.send_task(names.END_SESSION, args=["c1", "caller hung up", final])
    wait_for(lambda: task_ctx.store.events().get("archived") == 1)
    stored = task_ctx.store.load_record("c1")
    assert stored is not None and stored.archived
    assert stored.state.status is SessionStatus.ENDED and stored.state.current_turn == 2
    record = task_ctx.sink.read("c1")
    assert record is not None and record.end_reason == "caller hung up"
    assert [t["content"] for t in record.transcript] == ["bye", "goodbye"]
    assert task_ctx.store.archive_backlog() == 0


def test_end_from_a_fenced_owner_does_not_end_a_resumed_session(
    worker_app: Celery, task_ctx: TaskContext
) -> None:
    old = make_state("c1")
    task_ctx.store.save(Snapshot.of(old))
    assert claim(task_ctx, "c1").state is not None
    final = snapshot(old, seq=old.seq + 5).model_dump(mode="json")
    worker_app.send_task(names.END_SESSION, args=["c1", "old bridge closing", final])
    wait_for(lambda: task_ctx.store.events().get("ends_fenced") == 1)
    stored = task_ctx.store.load_record("c1")
    assert stored is not None and stored.state.status is SessionStatus.ACTIVE


def test_statistics_equal_the_ground_truth(worker_app: Celery, task_ctx: TaskContext) -> None:
    store = task_ctx.store
    for i, status in enumerate(["active"] * 3 + ["paused"] * 2 + ["error"]):
        store.save(Snapshot.of(make_state(f"live{i}", status=SessionStatus(status))))
    durations = [30.0, 60.0, 90.0, 120.0]
    now = datetime.now(UTC)
    for i, seconds in enumerate(durations):
        cid = f"done{i}"
        state = make_state(cid, created_at=now - timedelta(seconds=seconds))
        state.end("caller hung up", at=now)
        store.save(Snapshot.of(state))
        store.mark_archived(cid, seconds)
    assert claim(task_ctx, "live3").state is not None
    worker_app.send_task(names.COMPUTE_STATISTICS)
    wait_for(lambda: store.read_statistics() is not None)
    stats = store.read_statistics()
    assert stats is not None
    assert stats["status_counts"] == {"active": 4, "paused": 1, "error": 1, "ended": 4}
    assert stats["live_sessions"] == 6
    assert stats["resumes"] == 1 and stats["archived"] == 4 and stats["archive_backlog"] == 0
    assert stats["call_duration_s"] == {
        "count": 4, "mean": 75.0, "p50": 60.0, "p90": 120.0, "p99": 120.0, "max": 120.0,
    }  # fmt: skip


def test_a_pickled_task_is_refused(worker_app: Celery, task_ctx: TaskContext) -> None:
    pickled = wire(Snapshot.of(make_state("pickled")))
    worker_app.send_task(names.SAVE_SESSIONS, args=[pickled], serializer="pickle")
    worker_app.send_task(names.SAVE_SESSIONS, args=[wire(Snapshot.of(make_state("json")))])
    wait_for(lambda: applied(task_ctx) == 1)
    assert task_ctx.store.load_record("json") is not None
    assert task_ctx.store.load_record("pickled") is None
