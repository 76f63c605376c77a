"""The ASGI server: telephony WebSockets, health, statistics and Prometheus metrics."""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import logging
from collections.abc import AsyncIterator

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route, WebSocketRoute
from starlette.websockets import WebSocket

from bridges.audiocodes import AudioCodesBridge
from bridges.metrics import prometheus_text
from bridges.peer import Peer
from bridges.persister import tune_gc
from bridges.runtime import BridgeRuntime
from bridges.twilio import TwilioBridge, signature_valid
from bridges.twilio_status import status_callback
from sessions.settings import Settings

log = logging.getLogger(__name__)
SHUTDOWN_DRAIN_S = 5.0


def create_app(runtime: BridgeRuntime, *, owns_runtime: bool = True) -> Starlette:
    """The bridge app over `runtime` (closed with the app when it owns it)."""

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        await runtime.start()
        try:
            yield
        finally:
            await pause_live_calls(runtime)
            if owns_runtime:
                await runtime.close(SHUTDOWN_DRAIN_S)

    async def audiocodes(websocket: WebSocket) -> None:
        if not bearer_ok(websocket, runtime.settings):
            await websocket.send_denial_response(PlainTextResponse("unauthorized", 401))
            return
        await websocket.accept()
        peer = Peer(websocket, runtime.settings.max_frame_bytes)
        await AudioCodesBridge(runtime, peer).run()

    async def twilio(websocket: WebSocket) -> None:
        if not signature_valid(websocket, runtime.settings):
            await websocket.send_denial_response(PlainTextResponse("invalid signature", 403))
            return
        await websocket.accept()
        peer = Peer(websocket, runtime.settings.max_frame_bytes)
        await TwilioBridge(runtime, peer).run()

    async def twilio_status(request: Request) -> Response:
        return await status_callback(request, runtime)

    async def health(request: Request) -> Response:
        report = await runtime.health()
        return JSONResponse(report, status_code=200 if report["ok"] else 503)

    async def stats(request: Request) -> Response:
        return JSONResponse(runtime.stats())

    async def metrics(request: Request) -> Response:
        persister = vars(runtime.persister.metrics())
        events = await runtime.store_events()
        text = prometheus_text(runtime.metrics, len(runtime.calls), persister, events)
        return PlainTextResponse(text, media_type="text/plain; version=0.0.4")

    routes = [
        WebSocketRoute("/ws/audiocodes", audiocodes),
        WebSocketRoute("/ws/twilio", twilio),
        Route("/twilio/status", twilio_status, methods=["POST"]),
        Route("/health", health),
        Route("/stats", stats),
        Route("/metrics", metrics),
    ]
    return Starlette(routes=routes, lifespan=lifespan)


def bearer_ok(websocket: WebSocket, settings: Settings) -> bool:
    """The AudioCodes bearer token matches AUDIOCODES_BOT_TOKEN (no token set: no check)."""
    expected = settings.audiocodes_bot_token
    if expected is None:
        return True
    header = websocket.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    return scheme.lower() == "bearer" and hmac.compare_digest(
        token.strip().encode(), expected.get_secret_value().encode()
    )


async def pause_live_calls(runtime: BridgeRuntime) -> None:
    """Shutdown: every live call is handed over PAUSED, so that it resumes on another instance."""
    calls = list(runtime.calls.values())
    if calls:
        log.info("shutting down: handing %d live calls over", len(calls))
    await asyncio.gather(*(bridge.detach() for bridge in calls), return_exceptions=True)
    if runtime.calls:
        log.warning("%d calls still registered at shutdown", len(runtime.calls))


def serve(settings: Settings, host: str | None = None, port: int | None = None) -> None:
    """Run the bridge server with uvicorn until interrupted."""
    import uvicorn

    runtime = BridgeRuntime.build(settings)
    app = create_app(runtime)
    tune_gc()
    uvicorn.run(
        app,
        host=host or settings.bridge_host,
        port=port if port is not None else settings.bridge_port,
        ws_max_size=2 * settings.max_frame_bytes,  # past this uvicorn closes (1009)
        log_level="info",
        timeout_graceful_shutdown=int(SHUTDOWN_DRAIN_S) + 5,
    )
