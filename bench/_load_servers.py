"""The processes under load in bench/bridge_load.py: an instrumented bridge and a paced simulator.

The bridge keeps every latency sample of a measured window (opened and closed over HTTP at
`/bench/window`) and learns each frame's send time from the sender (`sentS` in caller
messages, `sent_s` in the simulator's audio deltas; one monotonic clock on the host).
"""

from __future__ import annotations

import asyncio
import functools
import time
from collections.abc import AsyncIterator
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any

import uvicorn
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from websockets.asyncio.server import serve

import bridges.audio
import bridges.call.turns
import bridges.server
import bridges.sim.server
from bridges.call.metrics import BridgeMetrics
from bridges.call.runtime import BridgeRuntime
from bridges.model.events import AUDIO_DELTA
from bridges.persist.persistence import Persistence
from bridges.persist.persister import SessionPersister, tune_gc
from bridges.sim.server import RealtimeSimulator
from bridges.sim.session import ProtocolSession
from bridges.telephony.peer import Incoming, Peer
from sessions.factory import build_storage
from sessions.settings import load_settings
from sessions.state import SessionState
from sessions.statistics import percentile
from tasks.runtime import CeleryDispatcher

FRAME_MS, TICK_MS = 20, 10
DIRECTIONS = ("to_model", "to_caller")
SERIES = (*DIRECTIONS, "sent_to_model", "sent_to_caller", "loop_lag")
SENT_S: ContextVar[float | None] = ContextVar("sent_s", default=None)
Summary = dict[str, float | int | None]


def summary(values: list[float]) -> Summary:
    ordered = sorted(values)
    return {"count": len(ordered), "p50": percentile(ordered, 0.5),
            "p99": percentile(ordered, 0.99), "max": ordered[-1] if ordered else None}  # fmt: skip


@dataclass
class WindowMetrics(BridgeMetrics):
    """The bridge's metrics, also keeping every sample of a measured window."""

    window: dict[str, list[float]] | None = None
    ticker: asyncio.Task[None] | None = None

    def relayed(self, direction: str, elapsed_s: float) -> None:
        super().relayed(direction, elapsed_s)
        if self.window is not None:
            self.window[direction].append(elapsed_s * 1000)
            if (sent_s := SENT_S.get()) is not None:
                self.window[f"sent_{direction}"].append((time.perf_counter() - sent_s) * 1000)

    async def endpoint(self, request: Request) -> Response:
        if request.query_params.get("action") == "start":
            self.window = {name: [] for name in SERIES}
            self.ticker = asyncio.create_task(self._tick(self.window["loop_lag"]))
            return JSONResponse({})
        samples, self.window = self.window or {}, None
        if self.ticker is not None:
            self.ticker.cancel()
        return JSONResponse({name: summary(values) for name, values in samples.items()})

    @staticmethod
    async def _tick(lags_ms: list[float]) -> None:
        while True:
            due = time.perf_counter() + TICK_MS / 1000
            await asyncio.sleep(TICK_MS / 1000)
            lags_ms.append((time.perf_counter() - due) * 1000)


class StampedPeer(Peer):
    """Makes the sender's send time of each message visible to the metrics."""

    async def messages(self) -> AsyncIterator[Incoming]:
        async for incoming in super().messages():
            SENT_S.set((incoming.data or {}).get("sentS"))
            yield incoming


async def stamped_delta(
    bridge: bridges.call.turns.ModelTurns, event: dict[str, Any], received_s: float
) -> None:
    SENT_S.set(event.get("sent_s"))
    await bridges.call.turns.ModelTurns._on_audio_delta(bridge, event, received_s)


class NoPersister(SessionPersister):
    """Persistence off: state changes are neither copied, queued, encoded nor sent."""

    def save(self, state: SessionState) -> None:
        return None

    save_now = save

    def end(self, state: SessionState, reason: str) -> None:
        state.end(reason)


def serve_bridge(
    port: int, realtime_url: str, persistence: str, deflate: bool, transcode: bool = False
) -> None:
    settings = load_settings(websocket_deflate=deflate)
    if transcode:  # the path µ-law callers took before passthrough: PCM16 24 kHz to the model
        bridges.audio.MODEL_FORMAT_FOR["raw/mulaw"] = "audio/pcm"
    if persistence == "on":
        runtime = BridgeRuntime.build(settings, realtime_url=realtime_url)
    else:
        persister = NoPersister(CeleryDispatcher(None), save_interval_ms=settings.save_interval_ms)
        runtime = BridgeRuntime(settings, build_storage(settings), Persistence(persister),
                                realtime_url=realtime_url)  # fmt: skip
    runtime.metrics = metrics = WindowMetrics()
    bridges.server.Peer = StampedPeer  # type: ignore[attr-defined]
    bridges.call.turns._HANDLERS[AUDIO_DELTA] = stamped_delta
    app = bridges.server.create_app(runtime)
    app.router.routes.append(Route("/bench/window", metrics.endpoint))
    tune_gc()
    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning",
                ws_max_size=settings.max_frame_bytes, ws_per_message_deflate=deflate,
                timeout_graceful_shutdown=10)  # fmt: skip


async def serve_simulator(port: int, deflate: bool) -> None:
    emit = ProtocolSession.emit

    async def stamped(self: ProtocolSession, event_type: str, **fields: Any) -> None:
        if event_type == AUDIO_DELTA:
            fields["sent_s"] = time.perf_counter()  # a bench-only key: output checks are off
        await emit(self, event_type, **fields)

    ProtocolSession.emit = stamped  # type: ignore[method-assign]
    if not deflate:
        bridges.sim.server.serve = functools.partial(serve, compression=None)  # type: ignore[attr-defined]
    async with RealtimeSimulator(
        port=port, pace=True, delta_ms=FRAME_MS, strict_output=False
    ) as sim:
        while True:  # the per-connection logs are not needed: keep memory flat
            await asyncio.sleep(1)
            for record in sim.connections:
                record.received.clear()
                record.sent.clear()
