"""A local realtime-model simulator speaking a subset of the OpenAI Realtime protocol.

It listens on a real WebSocket at `/v1/realtime`, detects speech with a simple server VAD,
"transcribes" audio made by `bridges.speech`, and answers deterministically: a greeting
before any user turn, "you said <digits>" after one, a function call of the first tool for
an utterance starting with 9, and "ok done" after a function call's output.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
from collections.abc import Callable
from typing import Any
from urllib.parse import parse_qs, urlsplit

from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.datastructures import Headers
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response

from bridges.simulator_protocol import (
    PREFIX_PADDING_MS,
    ClientEventError,
    ProtocolSession,
    SimConnection,
)

PATH = "/v1/realtime"
DEFAULT_MODEL = "gpt-4o-realtime-preview"

__all__ = ["ClientEventError", "RealtimeSimulator", "SimConnection", "run_simulator"]


class RealtimeSimulator:
    """A realtime-model server on a real WebSocket, recording every connection."""

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        silence_ms: int = 300,
        delta_ms: int = 100,
        pace: bool = False,
    ) -> None:
        self.host = host
        self.port = port
        self.silence_ms = silence_ms
        self.delta_ms = delta_ms
        self.pace = pace
        self.connections: list[SimConnection] = []
        self._sockets: dict[int, ServerConnection] = {}
        self._server: Server | None = None
        self._cond = asyncio.Condition()
        self._counters: dict[str, itertools.count[int]] = {}

    @property
    def url(self) -> str:
        """The WebSocket URL clients connect to."""
        return f"ws://{self.host}:{self.port}{PATH}"

    async def start(self) -> None:
        """Listen (on a free port when 0 was asked for)."""
        self._server = await serve(
            self._handle, self.host, self.port, process_request=self._check_path
        )
        self.port = self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        """Close every connection and stop listening."""
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None

    async def __aenter__(self) -> RealtimeSimulator:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

    def next_id(self, kind: str) -> str:
        """The next deterministic id of a kind: `sess_1`, `item_1`, `resp_1`, `call_1`."""
        counter = self._counters.setdefault(kind, itertools.count(1))
        return f"{kind}_{next(counter)}"

    def default_turn_detection(self) -> dict[str, Any]:
        """Server VAD settings of a new session."""
        return {
            "type": "server_vad",
            "threshold": 0.5,
            "prefix_padding_ms": PREFIX_PADDING_MS,
            "silence_duration_ms": self.silence_ms,
        }

    async def changed(self) -> None:
        """Wake everyone waiting in `wait_for`."""
        async with self._cond:
            self._cond.notify_all()

    async def wait_for(
        self, predicate: Callable[[RealtimeSimulator], bool], timeout_s: float = 5.0
    ) -> None:
        """Wait until `predicate(self)` holds; TimeoutError after `timeout_s`."""
        async with self._cond:
            try:
                await asyncio.wait_for(self._cond.wait_for(lambda: predicate(self)), timeout_s)
            except TimeoutError:
                raise TimeoutError(f"simulator condition not met within {timeout_s} s") from None

    async def drop_connections(self) -> None:
        """Close every open connection with 1000 "session expired", as a 60-minute expiry does."""
        dropped = [c for c in self.connections if not c.closed]
        for record in dropped:
            await self._sockets[record.index].close(1000, "session expired")
        await self.wait_for(lambda sim: all(c.closed for c in dropped))

    def _check_path(self, connection: ServerConnection, request: Request) -> Response | None:
        if urlsplit(request.path).path != PATH:
            return connection.respond(404, "not found\n")
        return None

    async def _handle(self, ws: ServerConnection) -> None:
        record = self._new_record(ws.request.path if ws.request else PATH, ws.request)
        self._sockets[record.index] = ws
        self.connections.append(record)
        await self.changed()
        try:
            await ProtocolSession(self, ws, record).run()
        except ConnectionClosed:
            pass
        finally:
            record.closed = True
            record.close_code = ws.close_code
            del self._sockets[record.index]
            await self.changed()

    def _new_record(self, path: str, request: Request | None) -> SimConnection:
        headers = request.headers if request else Headers()
        model = parse_qs(urlsplit(path).query).get("model", [DEFAULT_MODEL])[0]
        session_id = self.next_id("sess")
        config: dict[str, Any] = {
            "id": session_id,
            "object": "realtime.session",
            "model": model,
            "modalities": ["text", "audio"],
            "instructions": "",
            "voice": "alloy",
            "input_audio_format": "pcm16",
            "output_audio_format": "pcm16",
            "input_audio_transcription": None,
            "turn_detection": self.default_turn_detection(),
            "tools": [],
            "tool_choice": "auto",
        }
        authorized = "Authorization" in headers
        return SimConnection(len(self.connections), session_id, model, authorized, config)


async def run_simulator(host: str, port: int) -> None:
    """Serve a simulator until cancelled, printing its URL once listening."""
    async with RealtimeSimulator(host, port) as sim:
        print(sim.url, flush=True)
        await asyncio.Future()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="Local realtime-model simulator")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8765)
    arguments = parser.parse_args()
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(run_simulator(arguments.host, arguments.port))
