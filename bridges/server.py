"""The ASGI server: telephony WebSockets, health, statistics and Prometheus metrics."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator

from prometheus_client import CONTENT_TYPE_LATEST
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route, WebSocketRoute
from starlette.websockets import WebSocket

from bridges.call.metrics import ProcessValues
from bridges.call.runtime import BridgeRuntime
from bridges.guard import (
    AuthFailures,
    bearer_matches,
    check_exposure,
    is_loopback,
    operator_allowed,
)
from bridges.persist.persister import tune_gc
from bridges.telephony.audiocodes import AudioCodesBridge
from bridges.telephony.peer import Peer
from bridges.telephony.twilio import TwilioBridge, signature_valid
from bridges.telephony.twilio_status import status_callback
from sessions.settings import Settings

log = logging.getLogger(__name__)
SHUTDOWN_DRAIN_S = 5.0


def create_app(
    runtime: BridgeRuntime, *, owns_runtime: bool = True, loopback_only: bool = True
) -> Starlette:
    """The bridge app over `runtime` (closed with the app when it owns it).

    `loopback_only`: the server listens on loopback alone (then the operator endpoints answer
    without OPERATOR_TOKEN).
    """
    settings = runtime.settings
    failures = AuthFailures(settings.auth_failure_limit)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        await runtime.start()
        try:
            yield
        finally:
            await pause_live_calls(runtime)
            if owns_runtime:
                await runtime.close(SHUTDOWN_DRAIN_S)

    async def refused(websocket: WebSocket, endpoint: str, status: int, text: str) -> None:
        runtime.metrics.count(f"refused_upgrades_{endpoint}")
        await websocket.send_denial_response(PlainTextResponse(text, status))

    async def admitted(websocket: WebSocket, endpoint: str, enabled: bool, valid: bool) -> bool:
        """Whether an upgrade may go on; refused with 404, 429 or 401/403 otherwise."""
        client = websocket.client.host if websocket.client else "?"
        if not enabled:
            await refused(websocket, endpoint, 404, "not found")
        elif failures.refused(client):
            await refused(websocket, endpoint, 429, "too many failed attempts; try later")
        elif not valid:
            failures.failed(client)
            status = 401 if endpoint == "audiocodes" else 403
            await refused(websocket, endpoint, status, "unauthorized")
        else:
            return True
        return False

    async def audiocodes(websocket: WebSocket) -> None:
        valid = bearer_ok(websocket, settings)
        if await admitted(websocket, "audiocodes", settings.audiocodes_enabled, valid):
            await websocket.accept()
            await AudioCodesBridge(runtime, Peer(websocket, settings.max_frame_bytes)).run()

    async def twilio(websocket: WebSocket) -> None:
        valid = signature_valid(websocket, settings)
        if await admitted(websocket, "twilio", settings.twilio_enabled, valid):
            await websocket.accept()
            await TwilioBridge(runtime, Peer(websocket, settings.max_frame_bytes)).run()

    async def twilio_status(request: Request) -> Response:
        if not settings.twilio_enabled:
            return PlainTextResponse("not found", 404)
        return await status_callback(request, runtime)

    def operator(request: Request) -> bool:
        return operator_allowed(request.headers, settings, loopback_only)

    async def health(request: Request) -> Response:
        report = await runtime.health()
        status = 200 if report["ok"] else 503
        return JSONResponse(report if operator(request) else {"ok": report["ok"]}, status)

    async def stats(request: Request) -> Response:
        if not operator(request):
            return _unauthorized()
        return JSONResponse(runtime.stats())

    async def metrics(request: Request) -> Response:
        if not operator(request):
            return _unauthorized()
        events = await runtime.store_events()
        process = ProcessValues(len(runtime.calls), runtime.persister.metrics(), events)
        return Response(runtime.metrics.exposition(process), media_type=CONTENT_TYPE_LATEST)

    routes = [
        WebSocketRoute("/ws/audiocodes", audiocodes),
        WebSocketRoute("/ws/twilio", twilio),
        Route("/twilio/status", twilio_status, methods=["POST"]),
        Route("/health", health),
        Route("/stats", stats),
        Route("/metrics", metrics),
    ]
    return Starlette(routes=routes, lifespan=lifespan)


def _unauthorized() -> Response:
    return PlainTextResponse(
        "unauthorized: send Authorization: Bearer <OPERATOR_TOKEN>",
        401,
        headers={"WWW-Authenticate": "Bearer"},
    )


def bearer_ok(websocket: WebSocket, settings: Settings) -> bool:
    """The AudioCodes bearer token matches AUDIOCODES_BOT_TOKEN (no token set: no check; the
    bridge then refuses to listen beyond loopback, see `bridges.guard`)."""
    if settings.audiocodes_bot_token is None:
        return True
    return bearer_matches(websocket.headers, settings.audiocodes_bot_token)


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

    host = host or settings.bridge_host
    check_exposure(settings, host)
    loopback = is_loopback(host)
    if not loopback and settings.operator_token is None:
        log.warning("listening on %s: /stats and /metrics answer 401 until OPERATOR_TOKEN is "
                    "set; /health says only up or down", host)  # fmt: skip
    runtime = BridgeRuntime.build(settings)
    app = create_app(runtime, loopback_only=loopback)
    tune_gc()
    uvicorn.run(
        app,
        host=host,
        port=port if port is not None else settings.bridge_port,
        ws_max_size=2 * settings.max_frame_bytes,  # past this uvicorn closes (1009)
        ws_per_message_deflate=settings.websocket_deflate,
        log_level="info",
        timeout_graceful_shutdown=int(SHUTDOWN_DRAIN_S) + 5,
    )
