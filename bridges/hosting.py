"""Running bridge servers inside an existing event loop (the demo, tests and benchmarks)."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator

import uvicorn

from bridges.call.runtime import BridgeRuntime
from bridges.server import create_app


def free_port() -> int:
    """A TCP port on loopback that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextlib.asynccontextmanager
async def hosted_bridge(
    runtime: BridgeRuntime,
    *,
    owns_runtime: bool = True,
    port: int | None = None,
    loopback_only: bool = True,
) -> AsyncIterator[str]:
    """Serve a bridge on loopback; yields its `ws://` base URL; shuts down gracefully after.

    `loopback_only=False` serves it as if it listened beyond loopback (operator endpoints
    then want OPERATOR_TOKEN).
    """
    port = port or free_port()
    config = uvicorn.Config(
        create_app(runtime, owns_runtime=owns_runtime, loopback_only=loopback_only),
        host="127.0.0.1",
        port=port,
        log_level="warning",
        ws_max_size=2 * runtime.settings.max_frame_bytes,  # past this uvicorn closes (1009)
        ws_per_message_deflate=runtime.settings.websocket_deflate,
        lifespan="on",
    )
    server = uvicorn.Server(config)
    task = asyncio.create_task(server._serve())  # serve() would take over the process's signals
    try:
        while not server.started:
            if task.done():
                task.result()
                raise RuntimeError("bridge server stopped during start-up")
            await asyncio.sleep(0.005)  # uvicorn exposes no start-up event
        yield f"ws://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        await task
