"""The realtime-model client: one OpenAI Realtime session per call, reconnected transparently.

Server events reach the bridge through `on_event`, one at a time and in order, from a single
dispatcher task fed by the reader, so `on_event` may await `send` even during a reconnect.
Event types named in `inline_events` (the bridge's promise that their handling never waits
on the model, e.g. audio deltas that only go to the caller) are handled by the reader itself
whenever nothing is queued or being handled: no hop through the queue, in the same order.
When the server ends the session (sessions live at most 60 minutes) the client opens a new
one, sends `session.update` and the bridge's history, then reports `client.reconnected`;
when it cannot, it reports `client.failed`.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import logging
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any, Literal
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from pydantic import BaseModel, ConfigDict, Field
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidURI

from bridges.audio import ModelAudioFormat
from bridges.errors import ModelUnavailable
from sessions.settings import Settings

log = logging.getLogger(__name__)

EventHandler = Callable[[dict[str, Any]], Awaitable[None]]
HistorySource = Callable[[], list[dict[str, Any]]]

MAX_MESSAGE_BYTES = 16 * 1024 * 1024
MAX_BACKOFF_S = 5.0
RESUME_ANCHOR = (
    "The call was resumed; continue the conversation by voice from where it left off. "
    "The conversation so far follows. Keep answering with speech."
)


class RealtimeConfig(BaseModel):
    """How to reach the model and how its session is set up."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    url: str = "wss://api.openai.com/v1/realtime"
    api_key: str | None = Field(default=None, repr=False)
    model: str = "gpt-4o-realtime-preview"
    voice: str = "alloy"
    instructions: str = ""
    input_audio_format: ModelAudioFormat = "pcm16"
    output_audio_format: ModelAudioFormat = "pcm16"
    turn_detection: Literal["server_vad"] | None = "server_vad"
    silence_duration_ms: int | None = Field(default=None, ge=0)
    tools: list[dict[str, Any]] = Field(default_factory=list)
    input_transcription_model: str | None = "whisper-1"

    @classmethod
    def from_settings(cls, settings: Settings, **overrides: Any) -> RealtimeConfig:
        """The config the settings describe, with `overrides` on top."""
        key = settings.openai_api_key
        base: dict[str, Any] = {
            "url": settings.openai_realtime_url,
            "api_key": key.get_secret_value() if key is not None else None,
            "model": settings.openai_realtime_model,
            "voice": settings.openai_voice,
            "instructions": settings.bot_instructions,
        }
        return cls(**(base | overrides))

    @property
    def endpoint(self) -> str:
        """The URL with `model=` in its query."""
        parts = urlsplit(self.url)
        query = [(k, v) for k, v in parse_qsl(parts.query) if k != "model"]
        return urlunsplit(parts._replace(query=urlencode([*query, ("model", self.model)])))


def session_update_event(config: RealtimeConfig) -> dict[str, Any]:
    """The `session.update` that sets the model up for a call."""
    turn_detection: dict[str, Any] | None = None
    if config.turn_detection is not None:
        turn_detection = {"type": config.turn_detection}
        if config.silence_duration_ms is not None:
            turn_detection["silence_duration_ms"] = config.silence_duration_ms
    transcription = config.input_transcription_model
    session = {
        "modalities": ["audio", "text"],
        "instructions": config.instructions,
        "voice": config.voice,
        "input_audio_format": config.input_audio_format,
        "output_audio_format": config.output_audio_format,
        "input_audio_transcription": {"model": transcription} if transcription else None,
        "turn_detection": turn_detection,
        "tools": list(config.tools),
        "tool_choice": "auto",
    }
    return {"type": "session.update", "session": session}


def history_items(
    conversation_history: list[dict[str, Any]], function_calls: list[dict[str, Any]]
) -> list[dict[str, Any]]:
    """`conversation.item.create` events replaying a call's history into a new session."""
    items: list[dict[str, Any]] = []
    for index, (kind, entry) in enumerate(_interleave(conversation_history, function_calls)):
        items += _message_items(entry) if kind == "turn" else _call_items(entry, index)
    if not items:
        return []
    anchor = _message("system", "input_text", RESUME_ANCHOR)
    return [_create(item) for item in [anchor, *items]]


def _create(item: dict[str, Any]) -> dict[str, Any]:
    return {"type": "conversation.item.create", "item": item}


def _message(role: str, content_type: str, text: str) -> dict[str, Any]:
    return {"type": "message", "role": role, "content": [{"type": content_type, "text": text}]}


def _message_items(turn: dict[str, Any]) -> list[dict[str, Any]]:
    """A user turn as `input_text`, an assistant turn as `text`; anything else is skipped."""
    content, role = turn.get("content"), turn.get("role")
    if not isinstance(content, str) or not content.strip() or role not in ("user", "assistant"):
        return []
    return [_message(role, "input_text" if role == "user" else "text", content.strip())]


def _call_items(call: dict[str, Any], index: int) -> list[dict[str, Any]]:
    """A function call and its output, sharing one call id."""
    call_id = str(call.get("call_id") or f"call_replay_{index}")
    arguments = call.get("arguments")
    if not isinstance(arguments, str):
        arguments = json.dumps(arguments if arguments is not None else {}, default=str)
    result = call.get("result", call.get("output"))
    output = result if isinstance(result, str) else json.dumps(result, default=str)
    name = str(call.get("name") or "unknown_function")
    return [
        {"type": "function_call", "call_id": call_id, "name": name, "arguments": arguments},
        {"type": "function_call_output", "call_id": call_id, "output": output},
    ]


def _interleave(
    turns: list[dict[str, Any]], calls: list[dict[str, Any]]
) -> list[tuple[str, dict[str, Any]]]:
    """Turns and calls merged by timestamp (each list keeps its order; ties go to the turn)."""
    merged: list[tuple[str, dict[str, Any]]] = []
    turn_index = call_index = 0
    while turn_index < len(turns) or call_index < len(calls):
        if call_index < len(calls) and (
            turn_index >= len(turns) or _earlier(calls[call_index], turns[turn_index])
        ):
            merged.append(("call", calls[call_index]))
            call_index += 1
        else:
            merged.append(("turn", turns[turn_index]))
            turn_index += 1
    return merged


def _earlier(first: dict[str, Any], second: dict[str, Any]) -> bool:
    a, b = _when(first), _when(second)
    return a is not None and b is not None and a < b


def _when(entry: dict[str, Any]) -> datetime | None:
    """An entry's timestamp (ISO string or epoch seconds) as an aware datetime, if it has one."""
    value = entry.get("timestamp")
    try:
        if isinstance(value, int | float) and not isinstance(value, bool):
            return datetime.fromtimestamp(value, UTC)
        if isinstance(value, str):
            moment = datetime.fromisoformat(value)
            return moment if moment.tzinfo else moment.replace(tzinfo=UTC)
    except (ValueError, OverflowError, OSError):
        return None
    return None


class RealtimeClient:
    """A realtime-model connection that survives the server ending its session."""

    def __init__(
        self,
        config: RealtimeConfig,
        on_event: EventHandler,
        replay: HistorySource | None = None,
        *,
        inline_events: frozenset[str] = frozenset(),
        reconnect_attempts: int = 5,
        backoff_s: float = 0.2,
        open_timeout_s: float = 10.0,
    ) -> None:
        self.config = config
        self.reconnect_attempts = reconnect_attempts
        self.backoff_s = backoff_s
        self.open_timeout_s = open_timeout_s
        self.session_id: str | None = None
        self.dropped_audio_frames = 0
        self.reconnects = 0
        self._on_event = on_event
        self._replay = replay
        self._inline_events = inline_events
        self._handling = False
        self._ws: ClientConnection | None = None
        self._ready = asyncio.Event()
        self._send_lock = asyncio.Lock()
        self._events: asyncio.Queue[tuple[dict[str, Any], float]] = asyncio.Queue()
        self.event_received_s = 0.0  # when the event being handled arrived (perf_counter)
        self._tasks: list[asyncio.Task[None]] = []
        self._closing = False
        self._failure: str | None = None

    @property
    def connected(self) -> bool:
        """True while a session is open and usable."""
        return self._ws is not None and self._ready.is_set() and not self._closing

    async def connect(self) -> None:
        """Open the session and start handing server events to `on_event`."""
        self._ws, created = await self._open()
        self._ready.set()
        self._deliver(created)
        self._tasks = [
            asyncio.create_task(self._read(), name="realtime-reader"),
            asyncio.create_task(self._dispatch(), name="realtime-dispatcher"),
        ]

    async def send(self, event: dict[str, Any]) -> None:
        """Send a client event, waiting through a reconnect; ModelUnavailable once it failed."""
        text = json.dumps(event)
        while True:
            ws = await self._connection()
            try:
                async with self._send_lock:
                    await ws.send(text)
                return
            except ConnectionClosed:
                if self._ws is ws:
                    self._ready.clear()

    async def append_audio(self, pcm: bytes) -> None:
        """Append audio in the input format; dropped (and counted) while reconnecting."""
        self._check_usable()
        ws = self._ws
        if ws is None or not self._ready.is_set():
            self.dropped_audio_frames += 1
            return
        audio = base64.b64encode(pcm).decode("ascii")
        try:
            async with self._send_lock:
                await ws.send(json.dumps({"type": "input_audio_buffer.append", "audio": audio}))
        except ConnectionClosed:
            self.dropped_audio_frames += 1

    async def replay_history(self, items: list[dict[str, Any]]) -> int:
        """Send history items (from `history_items`); returns how many were sent."""
        for item in items:
            await self.send(item)
        return len(items)

    async def close(self) -> None:
        """Close the session for good; no reconnect follows."""
        self._closing = True
        self._ready.set()
        if self._ws is not None:
            await self._ws.close()
        for task in self._tasks:
            if task is not asyncio.current_task():
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task

    async def __aenter__(self) -> RealtimeClient:
        await self.connect()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    def _check_usable(self) -> None:
        if self._failure is not None:
            raise ModelUnavailable(self._failure)
        if self._closing:
            raise ModelUnavailable("the realtime client is closed")
        if not self._tasks:
            raise ModelUnavailable("the realtime client is not connected")

    async def _connection(self) -> ClientConnection:
        """The open connection, after any reconnect in progress."""
        while True:
            self._check_usable()
            ws = self._ws
            if ws is not None and self._ready.is_set():
                return ws
            await self._ready.wait()

    async def _open(self) -> tuple[ClientConnection, dict[str, Any]]:
        """A new connection with its `session.created` read and `session.update` sent."""
        where = self.config.endpoint
        headers = {"OpenAI-Beta": "realtime=v1"}
        if self.config.api_key:
            headers["Authorization"] = f"Bearer {self.config.api_key}"
        try:
            ws = await connect(
                where,
                additional_headers=headers,
                open_timeout=self.open_timeout_s,
                max_size=MAX_MESSAGE_BYTES,
            )
        except (OSError, InvalidHandshake, InvalidURI, TimeoutError) as exc:
            raise ModelUnavailable(f"cannot reach the realtime model at {where}: {exc}") from None
        try:
            async with asyncio.timeout(self.open_timeout_s):
                created = _parse(await ws.recv())
            if created is None or created["type"] != "session.created":
                raise ModelUnavailable(f"the realtime model at {where} did not create a session")
            await ws.send(json.dumps(session_update_event(self.config)))
        except (ConnectionClosed, TimeoutError) as exc:
            await ws.close()
            raise ModelUnavailable(f"the realtime model at {where} closed: {exc}") from None
        except ModelUnavailable:
            await ws.close()
            raise
        session = created.get("session")
        self.session_id = str(session.get("id")) if isinstance(session, dict) else None
        return ws, created

    async def _read(self) -> None:
        """Deliver server events, reconnecting whenever the server ends the session."""
        while self._ws is not None:
            ws = self._ws
            with contextlib.suppress(ConnectionClosed):
                async for raw in ws:
                    received_s = time.perf_counter()
                    event = _parse(raw)
                    if event is None:
                        continue
                    if self._may_inline(event):
                        await self._handle(event, received_s)
                    else:
                        self._deliver(event, received_s)
            if self._closing or not await self._reconnect(ws):
                return

    async def _reconnect(self, old: ClientConnection) -> bool:
        """Open a new session and replay the history; False when every attempt failed."""
        self._ws = None
        self._ready.clear()
        reason = f"closed with {old.close_code} {old.close_reason or ''}".strip()
        log.info("realtime session %s %s; reconnecting", self.session_id, reason)
        for attempt in range(self.reconnect_attempts):
            if attempt:
                await asyncio.sleep(min(self.backoff_s * 2 ** (attempt - 1), MAX_BACKOFF_S))
            try:
                ws, created = await self._open()
                replayed = await self._send_replay(ws)
            except (ModelUnavailable, ConnectionClosed) as exc:
                reason = str(exc)
                continue
            if self._closing:
                await ws.close()
                return False
            self._ws, self.reconnects = ws, self.reconnects + 1
            self._ready.set()
            self._deliver(created)
            reconnected = {"session_id": self.session_id, "replayed": replayed}
            self._deliver({"type": "client.reconnected", **reconnected})
            return True
        self._failure = f"the realtime model is unavailable after reconnecting failed: {reason}"
        self._ready.set()
        self._deliver({"type": "client.failed", "error": self._failure})
        return False

    async def _send_replay(self, ws: ClientConnection) -> int:
        """Send the bridge's current history into a new session."""
        try:
            items = self._replay() if self._replay is not None else []
        except Exception:
            log.exception("building the history to replay failed; continuing without it")
            items = []
        for item in items:
            await ws.send(json.dumps(item))
        return len(items)

    def _deliver(self, event: dict[str, Any], received_s: float | None = None) -> None:
        """Queue one event for `on_event`, with the time it arrived."""
        self._events.put_nowait((event, received_s or time.perf_counter()))

    def _may_inline(self, event: dict[str, Any]) -> bool:
        """True when the reader may handle `event` itself without reordering anything."""
        return event["type"] in self._inline_events and not self._handling and self._events.empty()

    async def _dispatch(self) -> None:
        """Hand queued events to `on_event` in order."""
        while True:
            event, received_s = await self._events.get()
            await self._handle(event, received_s)

    async def _handle(self, event: dict[str, Any], received_s: float) -> None:
        """One event to `on_event`; its failures are logged, never fatal."""
        self._handling, self.event_received_s = True, received_s
        try:
            await self._on_event(event)
        except Exception:
            log.exception("on_event failed for a %s event", event.get("type"))
        finally:
            self._handling = False


def _parse(raw: str | bytes) -> dict[str, Any] | None:
    """A server event, or None (logged) when the message is not one."""
    try:
        event = json.loads(raw)
    except ValueError:
        event = None
    if not isinstance(event, dict) or not isinstance(event.get("type"), str):
        log.warning("ignoring a realtime message that is not an event: %.200r", raw)
        return None
    return event
