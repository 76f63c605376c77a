"""Reliability with real processes: a killed worker loses no save, sweeps never double-archive,
beat schedules the sweep."""

from __future__ import annotations

import os
import signal
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from celery import Celery

import celeryconfig
from sessions.codec import Snapshot
from sessions.factory import build_sync_store
from sessions.redis_sync import SyncRedisStore
from sessions.settings import Settings
from tasks import names
from tasks.runtime import TaskContext
from tests.conftest import wait_for
from tests.helpers import make_state
from tests.services import delete_prefix, throwaway_redis
from tests.test_archive import pg_sink  # noqa: F401 - fixture
from tests.workers import broker_app, subprocess_beat, subprocess_worker


def expired_snapshots(count: int, prefix: str = "old") -> list[Snapshot]:
    return [Snapshot.of(make_state(f"{prefix}-{i}", idle_s=7200)) for i in range(count)]


@pytest.mark.usefixtures("inthread_worker")
def test_two_sweeps_at_once_archive_each_expired_session_exactly_once(
    worker_app: Celery,
    task_ctx: TaskContext,
    pg_sink,  # noqa: F811
) -> None:
    task_ctx.sink = pg_sink
    store = task_ctx.store
    for start in range(0, 10_000, 1000):
        store.save_many(expired_snapshots(1000, f"old{start}"))
    store.save_many([Snapshot.of(make_state(f"live-{i}")) for i in range(100)])
    worker_app.send_task(names.SWEEP_EXPIRED_SESSIONS, kwargs={"max_age_s": 3600})
    worker_app.send_task(names.SWEEP_EXPIRED_SESSIONS, kwargs={"max_age_s": 3600})
    wait_for(lambda: store.events().get("archived", 0) == 10_000, timeout_s=240, poll_s=0.2)
    wait_for(lambda: store.archive_backlog() == 0, timeout_s=30)
    rows = pg_sink._execute("SELECT count(*), sum(write_count), max(write_count) FROM {table}", ())
    assert rows == [(10_000, 10_000, 1)]
    assert store.events()["sessions_expired"] == 10_000
    assert store.live_count() == 100


def test_concurrent_expiry_batches_never_end_a_session_twice(task_ctx: TaskContext) -> None:
    store = task_ctx.store
    store.save_many(expired_snapshots(5000))
    results: list[list[str]] = [[], []]

    def drain(slot: int) -> None:  # both pick from the same index: they race for each id
        while True:
            batch = store.expire_batch(3600, 200)
            results[slot].extend(batch.ended)
            if not batch.ended and store.live_count() == 0:
                return

    threads = [threading.Thread(target=drain, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not set(results[0]) & set(results[1])
    assert len(results[0]) + len(results[1]) == 5000
    assert store.status_counts() == {"ended": 5000}


@pytest.fixture
def kill_env(redis_url: str, key_prefix: str, tmp_path: Path) -> Iterator[dict[str, str]]:
    """Sessions on a private Redis (so they can be paused), the broker on the shared one."""
    try:
        server = throwaway_redis()
        sessions_url = server.__enter__()
    except FileNotFoundError:
        pytest.fail(
            "the worker-kill test needs the redis-server binary (apt-get install redis-server)"
        )
    broker_prefix = f"test-kill-{uuid.uuid4().hex[:8]}:"
    env = {
        "REDIS_URL": sessions_url,
        "CELERY_BROKER_URL": redis_url,
        "CELERY_KEY_PREFIX": broker_prefix,
        "SESSION_PREFIX": key_prefix,
        "TASK_TIME_LIMIT": "4",
        "CELERY_VISIBILITY_TIMEOUT": "6",
        "ARCHIVE_DIR": str(tmp_path / "archive"),
    }
    try:
        yield env
    finally:
        server.__exit__(None, None, None)
        delete_prefix(redis_url, broker_prefix)


def test_a_killed_worker_loses_no_save(
    kill_env: dict[str, str], redis_url: str, tmp_path: Path
) -> None:
    settings = Settings(
        redis_url=kill_env["REDIS_URL"],
        celery_broker_url=redis_url,
        celery_key_prefix=kill_env["CELERY_KEY_PREFIX"],
        session_prefix=kill_env["SESSION_PREFIX"],
        task_time_limit_s=4,
        visibility_timeout_s=6,
    )
    app = broker_app(settings)
    store = build_sync_store(settings)
    assert isinstance(store, SyncRedisStore)
    broker = redis.Redis.from_url(redis_url)
    unacked = kill_env["CELERY_KEY_PREFIX"] + "unacked"
    batch = [
        s.model_dump(mode="json") for s in (Snapshot.of(make_state(f"k{i}")) for i in range(20))
    ]
    log_path = tmp_path / "worker.log"
    with subprocess_worker(app, kill_env, log_path) as first:
        store.client.execute_command("CLIENT", "PAUSE", 60_000, "WRITE")
        app.send_task(names.SAVE_SESSIONS, args=[batch])
        wait_for(lambda: broker.hlen(unacked) == 1)  # delivered, running, not acknowledged
        delivered_at = time.monotonic()
        os.kill(first.pid, signal.SIGKILL)
        first.wait(timeout=10)
        store.client.execute_command("CLIENT", "UNPAUSE")
    assert store.events().get("snapshot_batches", 0) == 0
    with subprocess_worker(app, kill_env, log_path):
        wait_for(lambda: store.events().get("snapshot_batches", 0) == 1, timeout_s=60)
        redelivered_s = time.monotonic() - delivered_at
    visibility_s = settings.visibility_timeout_s
    print(f"\nbatch applied {redelivered_s:.1f} s after delivery to the killed worker "
          f"(visibility timeout {visibility_s} s, restore pass every 1 s)")  # fmt: skip
    assert store.live_count() == 20
    assert redelivered_s >= settings.visibility_timeout_s - 1
    wait_for(lambda: broker.hlen(unacked) == 0)
    store.close()
    broker.close()


def test_the_beat_schedule_holds_the_sweep_at_300_s(
    redis_url: str, broker_prefix: str, tmp_path: Path
) -> None:
    config = celeryconfig.build(Settings())
    sweep = config["beat_schedule"]["sweep-expired-sessions"]
    assert (sweep["task"], sweep["schedule"]) == (names.SWEEP_EXPIRED_SESSIONS, 300.0)
    assert config["beat_schedule"]["compute-statistics"]["schedule"] == 60.0
    env = {"REDIS_URL": redis_url, "CELERY_KEY_PREFIX": broker_prefix}
    with subprocess_beat(env, tmp_path) as log_path:
        wait_for(lambda: "<freq: 5.00 minutes>" in log_path.read_text(), timeout_s=60)
    text = log_path.read_text()
    line = next(x for x in text.splitlines() if "sweep-expired-sessions" in x and "freq" in x)
    assert names.SWEEP_EXPIRED_SESSIONS in line and "5.00 minutes" in line


@pytest.mark.usefixtures("inthread_worker")
def test_beat_runs_the_sweep_on_a_worker(
    redis_url: str, broker_prefix: str, key_prefix: str, task_ctx: TaskContext, tmp_path: Path
) -> None:
    task_ctx.store.save_many(expired_snapshots(3))
    env = {"REDIS_URL": redis_url, "CELERY_KEY_PREFIX": broker_prefix,
           "SESSION_PREFIX": key_prefix, "CLEANUP_INTERVAL": "1"}  # fmt: skip
    with subprocess_beat(env, tmp_path):
        wait_for(lambda: "last_sweep_us" in task_ctx.store.events(), timeout_s=60)
    wait_for(lambda: task_ctx.store.events().get("archived") == 3)
