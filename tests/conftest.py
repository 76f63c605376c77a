"""Fixtures over the real services: a Redis found or started once per run, a key prefix per test."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path

import pytest
from celery import Celery
from celery.contrib.pytest import celery_worker  # noqa: F401 - Celery's in-thread worker
from celery.contrib.testing.worker import start_worker

import celeryconfig
from bridges.call.runtime import BridgeRuntime
from bridges.hosting import hosted_bridge
from bridges.sim.server import RealtimeSimulator
from sessions.archive import FileSystemSink
from sessions.factory import build_sync_store
from sessions.memory import MemorySessionStorage
from sessions.redis_async import RedisSessionStorage
from sessions.redis_sync import SyncRedisStore
from sessions.redis_topology import RedisTopology
from sessions.service import SessionManagerService
from sessions.settings import Settings
from sessions.storage import SessionStorage
from tasks import runtime
from tasks.runtime import CeleryDispatcher, TaskContext
from tests.services import delete_prefix, redis_for_tests
from tests.topology import ClusterGroup, binaries_missing, cluster_group


@pytest.fixture(scope="session")
def redis_url() -> Iterator[str]:
    """The Redis every Redis test talks to; the run stops (never skips) if there is none."""
    try:
        with redis_for_tests() as url:
            yield url
    except RuntimeError as exc:
        pytest.exit(str(exc), returncode=3)


@pytest.fixture
def key_prefix(redis_url: str) -> Iterator[str]:
    """A prefix no other test (or run) uses; its keys are deleted afterwards."""
    prefix = f"test:{uuid.uuid4().hex[:12]}:"
    yield prefix
    delete_prefix(redis_url, prefix)


@pytest.fixture
async def redis_storage(redis_url: str, key_prefix: str) -> AsyncIterator[RedisSessionStorage]:
    storage = RedisSessionStorage(redis_url, session_prefix=key_prefix, max_connections=20)
    yield storage
    await storage.close()


@pytest.fixture
async def memory_storage() -> AsyncIterator[MemorySessionStorage]:
    storage = MemorySessionStorage(max_sessions=10_000)
    yield storage
    await storage.close()


@pytest.fixture(scope="session")
def redis_cluster() -> Iterator[ClusterGroup]:
    """A three-master Redis Cluster of throwaway redis-server processes, for the whole run."""
    missing = binaries_missing()
    if missing:
        pytest.skip(f"the Redis Cluster tests start redis-server processes: {missing}")
    with cluster_group() as group:
        yield group


@pytest.fixture
async def cluster_storage(
    redis_cluster: ClusterGroup, key_prefix: str
) -> AsyncIterator[RedisSessionStorage]:
    topology = RedisTopology(kind="cluster", url=redis_cluster.url, shards=16)
    storage = RedisSessionStorage(session_prefix=key_prefix, max_connections=20, topology=topology)
    yield storage
    await storage.close()


@pytest.fixture(params=["memory", "redis", "cluster"])
def storage(request: pytest.FixtureRequest) -> SessionStorage:
    """Each behaviour of the storage contract runs on every backend: memory, one Redis, and a
    Redis Cluster (16 shards over three masters)."""
    backend: SessionStorage = request.getfixturevalue(f"{request.param}_storage")
    return backend


@pytest.fixture
async def service(storage: SessionStorage) -> SessionManagerService:
    return SessionManagerService(storage)


async def wait_until(
    condition: Callable[[], Awaitable[bool]], timeout_s: float = 10, poll_s: float = 0.02
) -> None:
    """Poll `condition` until true, for state only observable by polling (fails on timeout)."""
    deadline = asyncio.get_running_loop().time() + timeout_s
    while not await condition():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"condition not met within {timeout_s} s")
        await asyncio.sleep(poll_s)


# -- Celery: one in-thread worker per run on the real Redis broker --------------------------


@pytest.fixture(scope="session")
def broker_prefix(redis_url: str) -> Iterator[str]:
    """Broker keys of this run live under their own prefix (kombu's global_keyprefix)."""
    prefix = f"test-broker-{uuid.uuid4().hex[:10]}:"
    yield prefix
    delete_prefix(redis_url, prefix)


@pytest.fixture(scope="session")
def worker_app(redis_url: str, broker_prefix: str) -> Celery:
    """The real app (`workers.app`) pointed at the test broker."""
    from workers.app import app

    settings = Settings(redis_url=redis_url, celery_key_prefix=broker_prefix)
    app.conf.update(celeryconfig.build(settings))
    return app


@pytest.fixture(scope="session")
def inthread_worker(worker_app: Celery) -> Iterator[object]:
    """A real worker consuming every queue, in threads of this process."""
    with start_worker(
        worker_app,
        pool="threads",
        concurrency=4,
        perform_ping_check=False,
        queues=list(celeryconfig.QUEUES),
        loglevel="WARNING",
        shutdown_timeout=30,
    ) as worker:
        yield worker


def task_settings(redis_url: str, key_prefix: str, **extra: object) -> Settings:
    return Settings(redis_url=redis_url, session_prefix=key_prefix, **extra)  # type: ignore[arg-type]


@pytest.fixture
def task_ctx(redis_url: str, key_prefix: str, tmp_path: Path) -> Iterator[TaskContext]:
    """The context the in-thread worker's tasks use during one test."""
    settings = task_settings(redis_url, key_prefix, archive_dir=str(tmp_path / "archive"))
    store = build_sync_store(settings)
    assert isinstance(store, SyncRedisStore)
    ctx = TaskContext(settings, store, FileSystemSink(settings.archive_dir), CeleryDispatcher())
    runtime.configure(ctx)
    yield ctx
    runtime.configure(None)
    ctx.close()


def wait_for(condition: Callable[[], bool], timeout_s: float = 30, poll_s: float = 0.02) -> float:
    """Poll a condition observable only by polling; return the seconds it took."""
    start = time.monotonic()
    while not condition():
        if time.monotonic() - start > timeout_s:
            raise AssertionError(f"condition not met within {timeout_s} s")
        time.sleep(poll_s)
    return time.monotonic() - start


# -- bridges: the simulator and bridge runtimes ------------------------------------------------


@pytest.fixture
async def sim() -> AsyncIterator[RealtimeSimulator]:
    """The realtime-model simulator on a free port."""
    async with RealtimeSimulator() as simulator:
        yield simulator


@pytest.fixture
def redis_settings(redis_url: str, key_prefix: str, broker_prefix: str,
                   task_ctx: TaskContext, inthread_worker: object) -> Settings:  # fmt: skip
    """Bridges on the shared Redis, saving and archiving through the in-thread worker."""
    return Settings(redis_url=redis_url, session_prefix=key_prefix,
                    celery_key_prefix=broker_prefix, archive_dir=task_ctx.settings.archive_dir,
                    save_interval_ms=20)  # fmt: skip


@pytest.fixture
async def embedded(
    sim: RealtimeSimulator, tmp_path: Path
) -> AsyncIterator[tuple[str, BridgeRuntime]]:
    """A bridge server on the embedded default (small MAX_FRAME_BYTES); its URL and runtime."""
    settings = Settings(archive_dir=str(tmp_path), max_frame_bytes=4096)
    runtime = BridgeRuntime.build(settings, realtime_url=sim.url, schedule=False)
    async with hosted_bridge(runtime) as url:
        yield url, runtime
