"""Fixtures over the real services: a Redis found or started once per run, a key prefix per test."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator

import pytest

from sessions.memory import MemorySessionStorage
from sessions.redis_async import RedisSessionStorage
from sessions.service import SessionManagerService
from sessions.storage import SessionStorage
from tests.services import delete_prefix, redis_for_tests


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


@pytest.fixture(params=["memory", "redis"])
def storage(request: pytest.FixtureRequest) -> SessionStorage:
    """Each behaviour of the storage contract runs on both backends."""
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
