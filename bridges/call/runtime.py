"""What every bridge in a process shares: settings, storage, persister, functions, metrics."""

from __future__ import annotations

import asyncio
import logging
import uuid
from dataclasses import dataclass, field
from typing import Any, Protocol

from bridges.call.control import ControlListener
from bridges.call.functions import FunctionRegistry, default_registry
from bridges.call.handover import Handover
from bridges.call.metrics import BridgeMetrics
from bridges.model import RealtimeConfig
from bridges.persist.persistence import Persistence, build_persistence, ping_broker
from bridges.persist.persister import SessionPersister
from sessions.control import LOCAL, CallControl, RedisCallControl
from sessions.factory import build_storage
from sessions.memory import MemorySessionStorage
from sessions.redis_async import RedisSessionStorage
from sessions.redis_ops import redact_url
from sessions.service import SessionManagerService
from sessions.settings import Settings
from sessions.state import SessionState
from sessions.storage import EndOutcome, SessionStorage


class LiveCall(Protocol):
    """What the runtime knows of a call it serves (a `BaseBridge`; this module imports none)."""

    closed: bool

    @property
    def state(self) -> SessionState | None: ...
    async def hang_up(self, reason: str) -> None: ...
    async def detach(self) -> None: ...


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
    calls: dict[str, LiveCall] = field(default_factory=dict)
    started: bool = False
    control: CallControl = LOCAL
    _lag_watch: asyncio.Task[None] | None = None
    _listener: ControlListener | None = None
    _handover: Handover | None = None

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
        runtime = cls(settings, storage, persistence, realtime_url=realtime_url)
        if isinstance(storage, RedisSessionStorage):
            runtime.control = RedisCallControl(storage.client, storage.ops.keys)
        return runtime

    @property
    def handover(self) -> Handover:
        """Calls changing hands between this instance and the others."""
        if self._handover is None:
            self._handover = Handover(
                self.storage,
                self.persister,
                self.metrics,
                self.instance_id,
                self.settings.resume_handoff_ms,
                replicas=self.settings.effective_handoff_replicas,
                replica_wait_ms=self.settings.handoff_wait_ms,
            )
        return self._handover

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
            control=self.control,
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
        if isinstance(self.storage, RedisSessionStorage):
            self._listener = ControlListener(self.storage.client, self.storage.ops.keys,
                                             self.instance_id, self.hang_up_here)  # fmt: skip
            await self._listener.start()
        else:
            LOCAL.register(self.instance_id, self.hang_up_here)

    async def close(self, timeout_s: float = 5.0) -> None:
        """Drain the persister, then release the storage."""
        if not self.started:
            return
        self.started = False
        if self._lag_watch is not None:
            self._lag_watch.cancel()
        LOCAL.unregister(self.instance_id)
        if self._listener is not None:
            await self._listener.stop()
        await self.handover.close()
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

    async def hang_up_here(self, conversation_id: str, reason: str) -> bool:
        """Hang up a call this instance holds live (a control request); False if none."""
        bridge = self.calls.get(conversation_id)
        if bridge is None or bridge.closed:
            return False
        log.info("call %s: hang-up requested (%s)", conversation_id, reason)
        await bridge.hang_up(reason)
        return True

    async def end_anywhere(self, conversation_id: str, reason: str) -> bool:
        """End a call wherever it is: live here, live on another instance, or only stored."""
        self.handover.cancel_end(conversation_id)
        if await self.hang_up_here(conversation_id, reason):
            return True
        if await self.service.hang_up_live(conversation_id, reason):
            return True
        return await self.handover.end_stored(conversation_id, reason) is EndOutcome.ENDED

    async def store_events(self) -> dict[str, int] | None:
        """The storage's event counters (None when storage does not answer in time)."""
        try:
            return await asyncio.wait_for(self.storage.events(), HEALTH_TIMEOUT_S)
        except Exception:  # noqa: BLE001 - /metrics shows what it can
            return None

    async def health(self) -> dict[str, Any]:
        """Storage and broker reachability, each within HEALTH_TIMEOUT_S."""
        storage = await self._check_storage()
        broker = await self._check_broker()
        return {"ok": storage["ok"] and broker["ok"], "storage": storage, "broker": broker,
                "instance": self.instance_id}  # fmt: skip

    def stats(self) -> dict[str, Any]:
        """Live numbers of this process, for `/stats`."""
        persister = vars(self.persister.metrics())
        return self.metrics.snapshot(len(self.calls), persister) | {
            "instance": self.instance_id,
            "calls_waiting_grace": self.handover.waiting,
        }

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
                asyncio.to_thread(ping_broker, self.settings, HEALTH_TIMEOUT_S),
                HEALTH_TIMEOUT_S + 1,
            )
        except Exception as exc:  # noqa: BLE001 - reported, not raised
            return {"ok": False, "broker": redact_url(url), "error": str(exc)}
        return {"ok": True, "broker": redact_url(url)}
