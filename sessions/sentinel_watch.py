"""Follow a Sentinel failover at once: on `+switch-master`, drop the connections to the old master.

redis-py's Sentinel clients ask the sentinels for the master only when they open a
connection. After a failover the old master may go on accepting writes on the connections
already open until the sentinels turn it into a replica (their next look at it, seconds
later), and those writes are then lost. A watcher subscribes to the sentinels'
`+switch-master` channel; when the master it follows moves, it disconnects the pool, so the
next command asks the sentinels and reaches the new master (a command in flight on a
dropped connection fails with StorageUnavailable, which its caller retries).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from collections.abc import Iterator
from typing import Any

log = logging.getLogger(__name__)
CHANNEL = "+switch-master"
RETRY_S = 1.0
READ_TIMEOUT_S = 1.0


def _switched(message: Any, master_name: str) -> bool:
    """A `+switch-master <name> <old ip> <old port> <new ip> <new port>` for our master."""
    if not isinstance(message, dict) or message.get("type") != "message":
        return False
    return str(message.get("data", "")).split(" ", 1)[0] == master_name


def _rotation(sentinels: tuple[tuple[str, int], ...]) -> Iterator[tuple[str, int]]:
    while True:
        yield from sentinels


class AsyncMasterWatch:
    """The asyncio watcher of one Sentinel client's master (a task)."""

    def __init__(self, topology: Any, pool: Any) -> None:
        self.topology = topology
        self.pool = pool
        self.switches = 0
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="sentinel-watch")

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _run(self) -> None:
        from redis.asyncio import Redis
        from redis.exceptions import RedisError

        for host, port in _rotation(self.topology.sentinels):
            client = Redis(host=host, port=port, decode_responses=True,
                           **self.topology.sentinel_auth())  # fmt: skip
            try:
                pubsub = client.pubsub()
                await pubsub.subscribe(CHANNEL)
                while True:
                    message = await pubsub.get_message(timeout=READ_TIMEOUT_S)
                    if _switched(message, self.topology.master_name):
                        await self._follow(message)
            except (RedisError, OSError) as exc:
                log.debug("sentinel %s:%d: %s; watching through the next one", host, port, exc)
            finally:
                with contextlib.suppress(Exception):
                    await client.aclose()
            await asyncio.sleep(RETRY_S)

    async def _follow(self, message: dict[str, Any]) -> None:
        self.switches += 1
        log.info("sentinel: master %s moved (%s); reconnecting to the new master",
                 self.topology.master_name, message.get("data"))  # fmt: skip
        await self.pool.disconnect()


class MasterWatch:
    """The same for a blocking client (a daemon thread)."""

    def __init__(self, topology: Any, pool: Any) -> None:
        self.topology = topology
        self.pool = pool
        self.switches = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="sentinel-watch", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=READ_TIMEOUT_S + 1)

    def _run(self) -> None:
        from redis import Redis
        from redis.exceptions import RedisError

        for host, port in _rotation(self.topology.sentinels):
            if self._stop.is_set():
                return
            client = Redis(host=host, port=port, decode_responses=True,
                           socket_timeout=READ_TIMEOUT_S * 5,
                           **self.topology.sentinel_auth())  # fmt: skip
            try:
                pubsub: Any = client.pubsub()  # type: ignore[no-untyped-call]
                pubsub.subscribe(CHANNEL)
                while not self._stop.is_set():
                    message = pubsub.get_message(timeout=READ_TIMEOUT_S)
                    if _switched(message, self.topology.master_name):
                        self.switches += 1
                        log.info("sentinel: master %s moved (%s); reconnecting",
                                 self.topology.master_name, message.get("data"))  # fmt: skip
                        self.pool.disconnect()
            except (RedisError, OSError) as exc:
                log.debug("sentinel %s:%d: %s; watching through the next one", host, port, exc)
            finally:
                with contextlib.suppress(Exception):
                    client.close()
            self._stop.wait(RETRY_S)
