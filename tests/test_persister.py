"""The persister: saves coalesce and land, outages lose nothing, ends stay final, close drains."""

from __future__ import annotations

import base64
import json
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from celery import Celery
from kombu.compression import decompress

from bridges.persist.persistence import build_persistence, celery_client
from bridges.persist.persister import SessionPersister
from sessions.codec import Snapshot
from sessions.memory import MemorySessionStorage
from sessions.settings import Settings
from sessions.state import SessionState, SessionStatus
from tasks import names
from tasks.runtime import CeleryDispatcher, TaskContext
from tests.conftest import wait_for
from tests.helpers import make_state
from tests.services import free_port, throwaway_redis
from tests.workers import subprocess_worker


def stored(ctx: TaskContext, conversation_id: str) -> SessionState | None:
    record = ctx.store.load_record(conversation_id)
    return None if record is None else record.state


@pytest.fixture
def persister(worker_app: Celery, inthread_worker: object) -> Iterator[SessionPersister]:
    p = SessionPersister(CeleryDispatcher(worker_app, retry=False), save_interval_ms=20)
    p.start()
    yield p
    p.close(5)


def test_saves_coalesce_and_the_last_state_wins(
    persister: SessionPersister, task_ctx: TaskContext
) -> None:
    states = [make_state(f"c{i}") for i in range(100)]
    for state in states:
        persister.track(state.conversation_id)  # as a bridge does when a call attaches
    for turn in range(20):
        for state in states:
            state.add_conversation_item({"role": "user", "content": f"turn {turn}"})
            persister.save(state)
    assert persister.flush(10)
    wait_for(lambda: all((s := stored(task_ctx, f"c{i}")) and s.current_turn == 20
                         for i in range(100)))  # fmt: skip
    metrics = persister.metrics()
    assert metrics.snapshots_sent < 100 * 20 and metrics.backlog == 0
    assert metrics.live_sessions == 100
    for state in states[:40]:
        persister.forget(state.conversation_id)
    persister.save(states[0])  # a late save of a call that left does not make it live again
    assert persister.metrics().live_sessions == 60


def test_an_ended_session_is_never_overwritten_by_an_earlier_snapshot_sent_late(
    persister: SessionPersister, worker_app: Celery, task_ctx: TaskContext
) -> None:
    state = make_state("c1")
    persister.save_now(state)
    early = Snapshot.of(state).model_dump(mode="json")
    state.add_conversation_item({"role": "user", "content": "bye"})
    persister.end(state, "caller hung up")
    persister.save(state)  # a save after the end is ignored
    assert persister.flush(10)
    wait_for(lambda: task_ctx.store.events().get("archived") == 1)
    batches_before = task_ctx.store.events().get("snapshot_batches", 0)
    worker_app.send_task(names.SAVE_SESSIONS, args=[[early]])
    wait_for(lambda: task_ctx.store.events().get("snapshot_batches", 0) == batches_before + 1)
    assert task_ctx.store.events()["snapshots_stale"] >= 1
    final = stored(task_ctx, "c1")
    assert final is not None and final.status is SessionStatus.ENDED
    assert final.end_reason == "caller hung up" and final.current_turn == 1


def test_close_drains_everything(worker_app: Celery, inthread_worker: object,
                                 task_ctx: TaskContext) -> None:  # fmt: skip
    p = SessionPersister(CeleryDispatcher(worker_app, retry=False), save_interval_ms=10_000)
    p.start()
    for i in range(50):
        p.save(make_state(f"c{i}"))
    report = p.close(10)
    assert report.drained and report.unsent == []
    wait_for(lambda: task_ctx.store.live_count() == 50)


class StuckDispatcher:
    """A broker that never answers until released."""

    def __init__(self) -> None:
        self.release = threading.Event()

    def send(self, task_name: str, *args: object) -> None:
        self.release.wait(30)


def test_save_never_waits_for_a_blocked_publisher() -> None:
    stuck = StuckDispatcher()
    release = stuck.release
    p = SessionPersister(stuck, save_interval_ms=1)
    p.start()
    state = make_state("c1")
    p.save_now(state)
    wait_for(lambda: p.metrics().backlog == 1 and p.metrics().dirty == 0)  # in flight, stuck
    for i in range(10_000):
        p.save(make_state(f"s{i % 100}"))
    assert p.metrics().dirty == 100
    release.set()
    assert p.close(5).drained


def test_a_broker_outage_loses_no_session_latest_state(
    redis_url: str, key_prefix: str, task_ctx: TaskContext, tmp_path: Path
) -> None:
    port = free_port()
    broker_url = f"redis://127.0.0.1:{port}"
    settings = Settings(redis_url=redis_url, celery_broker_url=broker_url,
                        session_prefix=key_prefix)  # fmt: skip
    p = SessionPersister(CeleryDispatcher(celery_client(settings), retry=False),
                         save_interval_ms=20, backoff_max_s=1)  # fmt: skip
    p.start()
    states = [make_state(f"c{i}") for i in range(200)]
    for version in range(5):
        for state in states:
            state.caller = f"v{version}"
            p.save(state)
    wait_for(lambda: p.metrics().publish_failures >= 2)
    assert p.metrics().backlog == 200  # one entry per session, however many saves
    env = {"REDIS_URL": redis_url, "CELERY_BROKER_URL": broker_url, "SESSION_PREFIX": key_prefix}
    with (
        throwaway_redis(port=port),
        subprocess_worker(celery_client(settings), env, tmp_path / "worker.log"),
    ):
        assert p.flush(30)
        wait_for(lambda: task_ctx.store.live_count() == 200, timeout_s=60)
    for i in (0, 99, 199):
        state = stored(task_ctx, f"c{i}")
        assert state is not None and state.caller == "v4"
    assert p.close(1).drained


def test_close_reports_what_it_could_not_send() -> None:
    settings = Settings(celery_broker_url=f"redis://127.0.0.1:{free_port()}")
    p = SessionPersister(CeleryDispatcher(celery_client(settings), retry=False),
                         save_interval_ms=10)  # fmt: skip
    p.start()
    p.save(make_state("a"))
    p.save(make_state("b"))
    report = p.close(0.5)
    assert not report.drained and report.unsent == ["a", "b"]
    assert p.metrics().last_error is not None


async def test_the_embedded_default_runs_the_same_tasks_in_process(tmp_path: Path) -> None:
    settings = Settings(archive_dir=str(tmp_path / "archive"))
    memory = MemorySessionStorage()
    persistence = build_persistence(settings, memory, schedule=False)
    persistence.start()
    state = make_state("c1")
    for turn in range(5):
        state.add_conversation_item({"role": "user", "content": f"t{turn}"})
        persistence.persister.save(state)
    assert await persistence.persister.aflush(5)
    assert persistence.executor is not None and persistence.executor.drain(5)
    landed = await memory.load("c1")
    assert landed is not None and landed.current_turn == 5
    persistence.persister.end(state, "done")
    assert await persistence.persister.aflush(5) and persistence.executor.drain(5)
    assert list((tmp_path / "archive").rglob("c1.json"))
    report = await persistence.aclose(5)
    assert report.drained


def test_close_counts_a_batch_stuck_in_flight_as_unsent() -> None:
    stuck = StuckDispatcher()
    release = stuck.release
    p = SessionPersister(stuck, save_interval_ms=1)
    p.start()
    p.save_now(make_state("c1"))
    wait_for(lambda: p.metrics().backlog == 1 and p.metrics().dirty == 0)
    report = p.close(0.2)
    release.set()
    assert not report.drained and report.unsent == ["c1"]


def test_save_batches_travel_compressed_on_the_broker(redis_url: str, broker_prefix: str) -> None:
    prefix = f"{broker_prefix}wire:"  # a queue no worker consumes
    client = celery_client(Settings(redis_url=redis_url, celery_key_prefix=prefix))
    p = SessionPersister(CeleryDispatcher(client, retry=False), save_interval_ms=10_000)
    p.start()
    for i in range(50):
        state = make_state(f"w{i}")
        for turn in range(12):
            state.add_conversation_item({"role": "user", "content": f"turn {turn} of call {i}"})
        p.save(state)
    assert p.flush(10)
    p.close(1)
    with redis.Redis.from_url(redis_url) as reader:
        raw = reader.lpop(f"{prefix}persistence")
    assert isinstance(raw, bytes)
    message = json.loads(raw)
    assert message["headers"]["compression"] == "application/zstd"
    body = decompress(base64.b64decode(message["body"]), "application/zstd")
    (batch,), _, _ = json.loads(body)
    assert {s["conversation_id"] for s in json.loads(batch)} == {f"w{i}" for i in range(50)}
    assert len(message["body"]) * 3 < len(body)
