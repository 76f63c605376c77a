"""A local realtime-model simulator: a strict OpenAI Realtime GA server on a real WebSocket.

It serves `/v1/realtime` (OpenAI's path) and `/openai/v1/realtime` (Azure's GA v1 path),
refuses the retired beta dialect as the real server does (an `error` with code
`beta_api_shape_disabled`, then close code 4000), checks every client event against the
`openai` package's models and refuses keys they do not define (`unknown_parameter`), and
sends only events that pass the same check. With `api_key` set it refuses a handshake
without that key (HTTP 401); with `max_session_s` set it ends each session after that long
as the real server does at its cap (60 minutes on OpenAI, 30 on Azure): an `error` with
code `session_expired`, then the close. `session.created` announces that end in `expires_at`
(or, with `announced_session_s`, a later one: a close that comes by surprise).

Its "model" is deterministic (`bridges.sim.conversation`) and its speech is digits
(`bridges.sim.speech`). A dev and test tool: nothing on the production path imports it.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hmac
import itertools
import json
import time
from collections.abc import Callable
from typing import Any
from urllib.parse import parse_qs, urlsplit

from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.datastructures import Headers
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response

from bridges.sim.conversation import default_session
from bridges.sim.session import ProtocolSession, SimConnection, SimContext, stop_task

PATHS = ("/v1/realtime", "/openai/v1/realtime")
DEFAULT_MODEL = "gpt-realtime"
BETA_HEADER = "OpenAI-Beta"  # the retired dialect's marker, refused
CLOSE_BETA = 4000
OPENAI_SESSION_CAP_S = 3600

__all__ = ["RealtimeSimulator", "SimConnection", "run_simulator"]


class RealtimeSimulator:
    """A strict GA realtime server on a real WebSocket, recording every connection."""

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        silence_ms: int = 300,
        delta_ms: int = 100,
        pace: bool = False,
        api_key: str | None = None,
        max_session_s: float | None = None,
        announced_session_s: float | None = None,
        strict_output: bool = True,
    ) -> None:
        self.host = host
        self.port = port
        self.api_key = api_key
        self.max_session_s = max_session_s
        self.announced_session_s = announced_session_s
        self.connections: list[SimConnection] = []
        self.setup_error: dict[str, Any] | None = None  # answers every session.update when set
        self._sockets: dict[int, ServerConnection] = {}
        self._sessions: dict[int, ProtocolSession] = {}
        self._server: Server | None = None
        self._cond = asyncio.Condition()
        self._counters: dict[str, itertools.count[int]] = {}
        self.ctx = SimContext(self.next_id, self.changed, silence_ms, delta_ms, pace, strict_output)

    @property
    def url(self) -> str:
        """The OpenAI-style WebSocket URL clients connect to."""
        return f"ws://{self.host}:{self.port}{PATHS[0]}"

    @property
    def azure_endpoint(self) -> str:
        """An `AZURE_OPENAI_ENDPOINT` that reaches this simulator."""
        return f"http://{self.host}:{self.port}"

    async def start(self) -> None:
        """Listen (on a free port when 0 was asked for)."""
        self._server = await serve(
            self._handle, self.host, self.port, process_request=self._check_request
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
        """Close every open connection without warning (1001), as a server restart does."""
        dropped = [c for c in self.connections if not c.closed]
        for record in dropped:
            await self._sockets[record.index].close(1001, "going away")
        await self.wait_for(lambda sim: all(c.closed for c in dropped))

    async def send(self, index: int, event_type: str, **fields: Any) -> None:
        """Send a (checked) server event on one connection: an `error`, say."""
        await self._sessions[index].emit(event_type, **fields)

    async def send_unchecked(self, index: int, event: dict[str, Any]) -> None:
        """Send anything at all on one connection (for tests of a client's tolerance)."""
        await self._sockets[index].send(json.dumps(event))

    def violations(self) -> list[dict[str, Any]]:
        """Every error that refused a client event, on every connection."""
        return [error for record in self.connections for error in record.violations]

    def _check_request(self, connection: ServerConnection, request: Request) -> Response | None:
        if urlsplit(request.path).path not in PATHS:
            return connection.respond(404, "not found\n")
        if self.api_key is not None and not _authorized(request.headers, self.api_key):
            return connection.respond(401, "invalid credentials\n")
        return None

    async def _handle(self, ws: ServerConnection) -> None:
        record = self._new_record(ws.request)
        self._sockets[record.index] = ws
        self.connections.append(record)
        session = self._sessions[record.index] = ProtocolSession(self.ctx, ws, record)
        if self.setup_error is not None:
            session.handlers["session.update"] = self._refuse_update(session)
        await self.changed()
        expiry = asyncio.create_task(self._expire(session)) if self.max_session_s else None
        try:
            if ws.request is not None and BETA_HEADER in ws.request.headers:
                await self._refuse_beta(session)
            else:
                await session.run()
        except ConnectionClosed:
            pass
        finally:
            await stop_task(expiry)
            record.closed = True
            record.close_code = ws.close_code
            del self._sockets[record.index], self._sessions[record.index]
            await self.changed()

    def _refuse_update(self, session: ProtocolSession) -> Any:
        async def refuse(event: dict[str, Any]) -> None:
            assert self.setup_error is not None
            await session.emit(
                "error", error={"event_id": event.get("event_id"), **self.setup_error}
            )

        return refuse

    async def _refuse_beta(self, session: ProtocolSession) -> None:
        error = {
            "type": "invalid_request_error",
            "code": "beta_api_shape_disabled",
            "message": "The beta Realtime API shape is no longer supported; use the GA "
            "shape (no beta header).",
            "param": None,
            "event_id": None,
        }
        session.record.violations.append(error)
        await session.emit("error", error=error)
        await session.ws.close(CLOSE_BETA, "beta api shape disabled")

    async def _expire(self, session: ProtocolSession) -> None:
        assert self.max_session_s is not None
        await asyncio.sleep(self.max_session_s)
        cap = round(self.max_session_s)
        error = {
            "type": "invalid_request_error",
            "code": "session_expired",
            "message": f"Your session hit the maximum duration of {cap} seconds.",
            "param": None,
            "event_id": None,
        }
        with contextlib.suppress(ConnectionClosed):
            await session.emit("error", error=error)
            await session.ws.close(1000, "session expired")

    def _new_record(self, request: Request | None) -> SimConnection:
        headers = request.headers if request else Headers()
        path = request.path if request else PATHS[0]
        model = parse_qs(urlsplit(path).query).get("model", [DEFAULT_MODEL])[0]
        session_id = self.next_id("sess")
        lifetime_s = self.announced_session_s or self.max_session_s or OPENAI_SESSION_CAP_S
        config = default_session(
            session_id, model, int(time.time() + lifetime_s), self.ctx.silence_ms
        )
        auth = (
            "bearer" if "Authorization" in headers else "api-key" if "api-key" in headers else None
        )
        return SimConnection(
            len(self.connections), session_id, model, urlsplit(path).path, auth, config
        )


def _authorized(headers: Headers, key: str) -> bool:
    """Whether a handshake carries `key`: as a bearer token or in Azure's `api-key` header."""
    scheme, _, token = headers.get("Authorization", "").partition(" ")
    given = token.strip() if scheme.lower() == "bearer" else headers.get("api-key", "")
    return bool(given) and hmac.compare_digest(given.encode(), key.encode())


async def run_simulator(host: str, port: int, **options: Any) -> None:
    """Serve a simulator until cancelled, printing its URL once listening."""
    async with RealtimeSimulator(host, port, **options) as sim:
        print(sim.url, flush=True)
        await asyncio.Future()


def main() -> None:
    """`python -m bridges.sim`: serve until interrupted."""
    parser = argparse.ArgumentParser(description="Local strict Realtime GA simulator")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8765)
    parser.add_argument("--max-session-s", type=float, default=None)
    arguments = parser.parse_args()
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(
            run_simulator(arguments.host, arguments.port, max_session_s=arguments.max_session_s)
        )
