"""What every bridge in a process shares: settings, storage, persister, functions, metrics."""

from __future__ import annotations

import asyncio
import itertools
import logging
import uuid
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from bridges.functions import FunctionRegistry, default_registry
from bridges.metrics import BridgeMetrics
from bridges.model import RealtimeConfig
from bridges.persistence import Persistence, build_persistence, ping_broker
from bridges.persister import SessionPersister
from sessions.errors import RetryableError
from sessions.factory import build_storage
from sessions.memory import MemorySessionStorage
from sessions.redis_ops import redact_url
from sessions.service import SessionManagerService
from sessions.settings import Settings
from sessions.state import SessionStatus
from sessions.storage import SessionStorage

if TYPE_CHECKING:
    from bridges.base import BaseBridge

log = logging.getLogger(__name__)
HEALTH_TIMEOUT_S = 2.0
LAG_TICK_S = 0.02
HANDOFF_POLL_S = 0.02


@dataclass
class BridgeRuntime:
    """One per bridge process (the demo may share one between two server instances)."""

    settings: Settings
    storage: SessionStorage
    persistence: Persistence
    registry: FunctionRegistry = field(default_factory=default_registry)
    metrics: BridgeMetrics = field(default_factory=BridgeMetrics)
    instance_id: str = field(default_factory=lambda: f"bridge-{uuid.uuid4().hex[:8]}")
    realtime_url: str | None = None
    calls: dict[str, BaseBridge] = field(default_factory=dict)
    started: bool = False
    _lag_watch: asyncio.Task[None] | None = None

    @classmethod
    def build(
        cls, settings: Settings, *, realtime_url: str | None = None, schedule: bool = True
    ) -> BridgeRuntime:
        """Storage, persister and task dispatch as the settings describe them.

        ConfigError when the model provider's settings are incomplete (checked before a call).
        """
        RealtimeConfig.from_settings(settings)
        storage = build_storage(settings)
        memory = storage if isinstance(storage, MemorySessionStorage) else None
        persistence = build_persistence(settings, memory, schedule=schedule)
        return cls(settings, storage, persistence, realtime_url=realtime_url)

    @property
    def persister(self) -> SessionPersister:
        """The persister every state change goes through."""
        return self.persistence.persister

    @property
    def service(self) -> SessionManagerService:
        """The session API over this runtime's storage."""
        return SessionManagerService(
            self.storage,
            session_ttl_s=self.settings.session_ttl_s,
            max_sessions=self.settings.max_sessions,
        )

    def realtime_config(self, **overrides: Any) -> RealtimeConfig:
        """The model connection for a call, with this runtime's functions as tools."""
        base: dict[str, Any] = {"tools": self.registry.tools()}
        if self.realtime_url:
            base["url"] = self.realtime_url
        return RealtimeConfig.from_settings(self.settings, **(base | overrides))

    async def start(self) -> None:
        """Start storage background work and the persister (once)."""
        if self.started:
            return
        self.started = True
        await self.storage.start()
        self.persistence.start()
        self._lag_watch = asyncio.create_task(self._watch_loop_lag(), name="loop-lag")

    async def close(self, timeout_s: float = 5.0) -> None:
        """Drain the persister, then release the storage."""
        if not self.started:
            return
        self.started = False
        if self._lag_watch is not None:
            self._lag_watch.cancel()
        report = await self.persistence.aclose(timeout_s)
        if not report.drained:
            log.error("bridge closed with %d sessions unsent", len(report.unsent))
        await self.storage.close()

    async def settle(self) -> None:
        """Push out pending saves (embedded: and apply them) before reading shared state."""
        await self.persister.aflush(1.0)
        executor = self.persistence.executor
        if executor is not None:
            await asyncio.to_thread(executor.drain, 1.0)

    async def await_handoff(self, conversation_id: str) -> None:
        """Before claiming a call another instance holds, give its last save time to land.

        A caller that reconnects at once can reach this instance before the one it left has
        stored the call as PAUSED, and that save carries the last turns. While the stored
        state is ACTIVE and held by another instance, wait for the hand-off, at most
        RESUME_HANDOFF_MS; an instance that stays silent (it crashed, or never saw the drop)
        is then fenced out by the claim.
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.settings.resume_handoff_ms / 1000
        for attempt in itertools.count():
            holder = await self._holder_elsewhere(conversation_id)
            if holder is None:
                return
            if loop.time() >= deadline:
                self.metrics.count("resume_handoff_timeouts")
                log.warning("resume of %s: %s did not hand the call over in %d ms; claiming it",
                            conversation_id, holder, self.settings.resume_handoff_ms)  # fmt: skip
                return
            if attempt == 0:
                self.metrics.count("resume_handoff_waits")
            await asyncio.sleep(HANDOFF_POLL_S)

    async def _holder_elsewhere(self, conversation_id: str) -> str | None:
        """The other instance that holds the call ACTIVE, if any."""
        try:
            state = await self.storage.load(conversation_id)
        except RetryableError:
            return None  # the claim reports the outage
        if state is None or state.status is not SessionStatus.ACTIVE:
            return None
        return None if state.session_id == self.instance_id else state.session_id

    async def health(self) -> dict[str, Any]:
        """Storage and broker reachability, each within HEALTH_TIMEOUT_S."""
        storage = await self._check_storage()
        broker = await self._check_broker()
        return {"ok": storage["ok"] and broker["ok"], "storage": storage, "broker": broker,
                "instance": self.instance_id}  # fmt: skip

    def stats(self) -> dict[str, Any]:
        """Live numbers of this process, for `/stats`."""
        persister = vars(self.persister.metrics())
        return self.metrics.snapshot(len(self.calls), persister) | {"instance": self.instance_id}

    async def _watch_loop_lag(self) -> None:
        """Record how late a LAG_TICK_S timer fires: the queueing every frame waits through."""
        loop = asyncio.get_running_loop()
        while True:
            due = loop.time() + LAG_TICK_S
            await asyncio.sleep(LAG_TICK_S)
            self.metrics.loop_lag_ms.observe(max(0.0, loop.time() - due) * 1000)

    async def _check_storage(self) -> dict[str, Any]:
        try:
            live = await asyncio.wait_for(self.storage.live_count(), HEALTH_TIMEOUT_S)
        except Exception as exc:  # noqa: BLE001 - reported, not raised
            return {"ok": False, "backend": self.settings.storage_backend, "error": str(exc)}
        return {"ok": True, "backend": self.settings.storage_backend, "live_sessions": live}

    async def _check_broker(self) -> dict[str, Any]:
        if self.persistence.executor is not None:
            return {"ok": True, "dispatch": "local executor (embedded default)"}
        url = self.settings.broker_url
        try:
            await asyncio.wait_for(
                asyncio.to_thread(ping_broker, url, HEALTH_TIMEOUT_S), HEALTH_TIMEOUT_S + 1
            )
        except Exception as exc:  # noqa: BLE001 - reported, not raised
            return {"ok": False, "broker": redact_url(url), "error": str(exc)}
        return {"ok": True, "broker": redact_url(url)}
