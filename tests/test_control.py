"""The bridge's control channel outlives a Redis outage: it subscribes again and serves requests.

A private redis-server (never the shared one) is stopped and started again on the same port.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterator

import pytest
from redis.exceptions import RedisError

from bridges.call import control
from bridges.call.control import ControlListener
from sessions.control import RedisCallControl
from sessions.redis_async import RedisSessionStorage
from tests.conftest import wait_until
from tests.services import free_port, throwaway_redis

INSTANCE = "bridge-ctl-1"


class Resubscribing(logging.Handler):
    """Sets `seen` once the listener logs that it lost its channel and subscribes again."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.seen = asyncio.Event()

    def emit(self, record: logging.LogRecord) -> None:
        if "subscribing again" in record.getMessage():
            self.seen.set()


@pytest.fixture
def resubscribing() -> Iterator[Resubscribing]:
    handler = Resubscribing()
    control.log.addHandler(handler)
    yield handler
    control.log.removeHandler(handler)


async def test_the_control_listener_subscribes_again_once_redis_is_back(
    resubscribing: Resubscribing,
) -> None:
    port = free_port()
    hung_up: list[tuple[str, str]] = []

    async def hang_up_here(conversation_id: str, reason: str) -> bool:
        hung_up.append((conversation_id, reason))
        return True

    async def served(conversation_id: str) -> bool:
        try:
            return await requests.hang_up(INSTANCE, conversation_id, "after the outage")
        except RedisError:
            return False  # the requester's own connection is being re-established

    with throwaway_redis(port=port) as url:
        storage = RedisSessionStorage(url, "ctl-test:")
        keys = storage.ops.keys
        listener = ControlListener(storage.client, keys, INSTANCE, hang_up_here)
        await listener.start()
        requests = RedisCallControl(storage.client, keys)
        assert await requests.hang_up(INSTANCE, "c1", "before the outage")
    try:
        await asyncio.wait_for(resubscribing.seen.wait(), 30)
        with throwaway_redis(port=port):
            await wait_until(lambda: served("c2"), timeout_s=15)
    finally:
        await listener.stop()
        await storage.close()
    assert hung_up[0] == ("c1", "before the outage")
    assert ("c2", "after the outage") in hung_up
