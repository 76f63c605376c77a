"""The simulator's side of one realtime connection: events in, deterministic answers out."""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from websockets.asyncio.server import ServerConnection
from websockets.exceptions import ConnectionClosed

from bridges.audio import (
    MODEL_AUDIO_FORMATS,
    AudioConverter,
    MediaFormat,
    ModelAudioFormat,
    encoding_of,
    frame_bytes,
    pcm16_to_mulaw,
)
from bridges.errors import ProtocolError
from bridges.speech import EnergyVad, digits_of, transcribe, utterance_audio

if TYPE_CHECKING:
    from bridges.simulator import RealtimeSimulator

VAD_THRESHOLD = 500
PREFIX_PADDING_MS = 300
MODEL_RATE_HZ = 24_000
AS_MEDIA: dict[str, MediaFormat] = {"pcm16": "raw/lpcm16_24", "g711_ulaw": "raw/mulaw"}
ITEM_TYPES = ("message", "function_call", "function_call_output")
ROLES = ("user", "assistant", "system")
REQUIRED_FIELDS = {
    "function_call": ("call_id", "name", "arguments"),
    "function_call_output": ("call_id", "output"),
}


class ClientEventError(Exception):
    """A client event the simulator refuses; it becomes an `error` event."""

    def __init__(self, code: str, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.param = param


@dataclass
class SimConnection:
    """What one client connection did and what the simulator answered."""

    index: int
    session_id: str
    model: str
    authorized: bool
    config: dict[str, Any]
    received: list[dict[str, Any]] = field(default_factory=list)
    sent: list[dict[str, Any]] = field(default_factory=list)
    items: list[dict[str, Any]] = field(default_factory=list)
    conversation: list[dict[str, Any]] = field(default_factory=list)
    closed: bool = False
    close_code: int | None = None

    def received_types(self) -> list[str]:
        """The `type` of every client event, in order."""
        return [str(e.get("type")) for e in self.received]

    def sent_of(self, event_type: str) -> list[dict[str, Any]]:
        """Every server event of one type, in order."""
        return [e for e in self.sent if e.get("type") == event_type]


@dataclass
class _Response:
    id: str
    cancelled: asyncio.Event = field(default_factory=asyncio.Event)
    task: asyncio.Task[None] | None = None


def _field(event: dict[str, Any], name: str, kind: type, *, required: bool = True) -> Any:
    """`event[name]` checked against `kind`; ClientEventError when missing or mistyped."""
    value = event.get(name)
    if value is None and not required:
        return None
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise ClientEventError(
            "invalid_type", f"{event.get('type')}.{name} must be a {kind.__name__}", name
        )
    return value


def _sanitized(event: dict[str, Any], key: str) -> dict[str, Any]:
    """A copy of `event` with the base64 audio under `key` replaced by its byte length."""
    value = event.get(key)
    if not isinstance(value, str):
        return dict(event)
    try:
        size: int | None = len(base64.b64decode(value, validate=True))
    except binascii.Error:
        size = None
    return {**event, key: size}


def _entry_text(item: dict[str, Any]) -> str:
    """The text of a message item's content parts."""
    parts = item.get("content") or []
    return " ".join(
        str(p.get("text") or p.get("transcript") or "") for p in parts if isinstance(p, dict)
    ).strip()


class ProtocolSession:
    """The protocol of one connection."""

    def __init__(self, sim: RealtimeSimulator, ws: ServerConnection, record: SimConnection):
        self.sim, self.ws, self.record = sim, ws, record
        self.buffer = bytearray()
        self.vad = EnergyVad(MODEL_RATE_HZ, threshold=VAD_THRESHOLD, silence_ms=sim.silence_ms)
        self.speech_item: str | None = None
        self.active: _Response | None = None
        self.input = AudioConverter(AS_MEDIA["pcm16"], "pcm16")
        self.handlers: dict[str, Callable[[dict[str, Any]], Awaitable[None]]] = {
            "session.update": self.on_session_update,
            "input_audio_buffer.append": self.on_append,
            "input_audio_buffer.commit": self.on_commit,
            "input_audio_buffer.clear": self.on_clear,
            "conversation.item.create": self.on_item_create,
            "conversation.item.truncate": self.on_truncate,
            "response.create": self.on_response_create,
            "response.cancel": self.on_response_cancel,
        }

    async def run(self) -> None:
        """Greet with `session.created`, then handle client events until the socket closes."""
        await self.emit("session.created", session=self.record.config)
        try:
            async for raw in self.ws:
                await self.handle(raw if isinstance(raw, str) else raw.decode("utf-8", "replace"))
        finally:
            if self.active is not None and self.active.task is not None:
                self.active.task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await self.active.task

    async def emit(self, event_type: str, **fields: Any) -> None:
        """Send one server event and record it (audio deltas as their byte length)."""
        event = {"event_id": self.sim.next_id("event"), "type": event_type, **fields}
        text = json.dumps(event)
        audio = event_type == "response.audio.delta"
        self.record.sent.append(_sanitized(event, "delta") if audio else json.loads(text))
        await self.ws.send(text)
        await self.sim.changed()

    async def handle(self, raw: str) -> None:
        """Record and dispatch one client message; refusals become `error` events."""
        try:
            event = self.parse(raw)
            handler = self.handlers.get(event["type"])
            if handler is None:
                raise ClientEventError("unknown_event_type", f"unknown type {event['type']!r}")
            await handler(event)
        except ClientEventError as exc:
            error = {"type": "invalid_request_error", "code": exc.code, "message": str(exc)}
            await self.emit("error", error={**error, "param": exc.param})
        await self.sim.changed()

    def parse(self, raw: str) -> dict[str, Any]:
        """The client event in `raw`, recorded; ClientEventError when it is not one."""
        try:
            event = json.loads(raw)
        except json.JSONDecodeError as exc:
            event = exc
        if not isinstance(event, dict):
            self.record.received.append({"type": None, "raw": raw[:200]})
            raise ClientEventError("invalid_json", "message must be a JSON object")
        self.record.received.append(_sanitized(event, "audio"))
        if not isinstance(event.get("type"), str):
            raise ClientEventError("missing_type", "message has no string 'type'", "type")
        return event

    async def on_session_update(self, event: dict[str, Any]) -> None:
        """Merge a session config after checking its fields."""
        session = _field(event, "session", dict)
        for key in ("input_audio_format", "output_audio_format"):
            if key in session and session[key] not in MODEL_AUDIO_FORMATS:
                raise ClientEventError("invalid_value", f"unsupported {key} {session[key]!r}", key)
        tools = session.get("tools", [])
        if not isinstance(tools, list) or not all(isinstance(t, dict) for t in tools):
            raise ClientEventError("invalid_type", "tools must be a list of objects", "tools")
        config = self.record.config
        vad = self.turn_detection(session.get("turn_detection", config["turn_detection"]))
        config.update({**session, "turn_detection": vad})
        self.vad.silence_ms = int((vad or {}).get("silence_duration_ms") or self.sim.silence_ms)
        self.input = AudioConverter(AS_MEDIA[config["input_audio_format"]], "pcm16")
        await self.emit("session.updated", session=config)

    def turn_detection(self, value: Any) -> dict[str, Any] | None:
        """A checked `turn_detection` merged over the server VAD defaults."""
        if value is None:
            return None
        if not isinstance(value, dict) or value.get("type") != "server_vad":
            raise ClientEventError("invalid_value", "turn_detection must be server_vad or null")
        _field(value, "silence_duration_ms", int, required=False)
        return {**self.sim.default_turn_detection(), **value}

    async def on_append(self, event: dict[str, Any]) -> None:
        """Decode and buffer audio, running the server VAD when it is on."""
        try:
            data = base64.b64decode(_field(event, "audio", str), validate=True)
            pcm = self.input.to_model(data)
        except (binascii.Error, ProtocolError) as exc:
            raise ClientEventError("invalid_audio", f"bad audio: {exc}", "audio") from None
        self.buffer += pcm
        if self.record.config.get("turn_detection") is None:
            return
        for vad_event in self.vad.feed(pcm):
            if vad_event.kind == "speech_started":
                await self.speech_started(vad_event.at_ms)
            else:
                await self.speech_stopped(vad_event.at_ms)
        if not self.vad.speaking:
            del self.buffer[: -PREFIX_PADDING_MS * MODEL_RATE_HZ // 1000 * 2]

    async def speech_started(self, start_ms: int) -> None:
        """Open a user item; a response still speaking is interrupted."""
        self.speech_item = self.sim.next_id("item")
        if self.active is not None:
            self.active.cancelled.set()
        await self.emit(
            "input_audio_buffer.speech_started", audio_start_ms=start_ms, item_id=self.speech_item
        )

    async def speech_stopped(self, end_ms: int) -> None:
        """Commit the turn and answer it."""
        await self.emit(
            "input_audio_buffer.speech_stopped", audio_end_ms=end_ms, item_id=self.speech_item
        )
        await self.commit()
        await self.start_response()

    async def on_commit(self, event: dict[str, Any]) -> None:
        """Commit the buffer by hand (a response follows only under server VAD)."""
        if not self.buffer:
            raise ClientEventError("input_audio_buffer_commit_empty", "the audio buffer is empty")
        await self.commit()
        if self.record.config.get("turn_detection") is not None:
            await self.start_response()

    async def commit(self) -> None:
        """Turn the buffer into a transcribed user item."""
        item_id = self.speech_item or self.sim.next_id("item")
        transcript = transcribe(bytes(self.buffer), MODEL_RATE_HZ)
        self.buffer.clear()
        self.speech_item = None
        self.vad.reset()
        content = [{"type": "input_audio", "transcript": None}]
        item = _item(item_id, "message", role="user", status="completed", content=content)
        previous = self.add_to_conversation(item, transcript)
        ids = {"item_id": item_id}
        await self.emit("input_audio_buffer.committed", **ids, previous_item_id=previous)
        await self.emit("conversation.item.created", previous_item_id=previous, item=item)
        await self.emit(
            "conversation.item.input_audio_transcription.completed",
            **ids,
            content_index=0,
            transcript=transcript,
        )

    def add_to_conversation(self, item: dict[str, Any], text: str) -> str | None:
        """Append an item with its text; returns the id of the item before it."""
        conversation = self.record.conversation
        previous = conversation[-1]["id"] if conversation else None
        conversation.append({**item, "text": text})
        return previous

    async def on_clear(self, event: dict[str, Any]) -> None:
        """Empty the audio buffer."""
        self.buffer.clear()
        self.speech_item = None
        self.vad.reset()
        await self.emit("input_audio_buffer.cleared")

    async def on_item_create(self, event: dict[str, Any]) -> None:
        """Add a client item to the conversation."""
        item = dict(_field(event, "item", dict))
        _check_item(item)
        item.setdefault("id", self.sim.next_id("item"))
        self.record.items.append(item)
        previous = self.add_to_conversation(item, _entry_text(item))
        await self.emit("conversation.item.created", previous_item_id=previous, item=item)

    async def on_truncate(self, event: dict[str, Any]) -> None:
        """Acknowledge a truncation of a known item."""
        item_id = _field(event, "item_id", str)
        fields = {k: _field(event, k, int) for k in ("content_index", "audio_end_ms")}
        if not any(e["id"] == item_id for e in self.record.conversation):
            raise ClientEventError("item_not_found", f"no item {item_id!r}", "item_id")
        await self.emit("conversation.item.truncated", item_id=item_id, **fields)

    async def on_response_create(self, event: dict[str, Any]) -> None:
        """Start a response unless one is running."""
        if self.active is not None:
            code = "conversation_already_has_active_response"
            raise ClientEventError(code, "a response is already in progress")
        await self.start_response()

    async def on_response_cancel(self, event: dict[str, Any]) -> None:
        """Stop the running response."""
        if self.active is None:
            raise ClientEventError("response_cancel_not_active", "no response is in progress")
        self.active.cancelled.set()

    async def start_response(self) -> None:
        """Run a response as its own task, so `response.cancel` can stop it."""
        if self.active is not None:
            self.active.cancelled.set()
        response = _Response(self.sim.next_id("resp"))
        self.active = response
        response.task = asyncio.create_task(self.respond(response))

    async def respond(self, response: _Response) -> None:
        """Decide the answer from the conversation and stream it."""
        try:
            created = {"id": response.id, "object": "realtime.response", "status": "in_progress"}
            await self.emit("response.created", response={**created, "output": []})
            kind, value = self.plan()
            if kind == "call":
                output, status = await self.call_tool(response, value), "completed"
            else:
                output, status = await self.speak(response, value)
            await self.emit(
                "response.done", response={**created, "status": status, "output": output}
            )
        except ConnectionClosed:
            pass
        finally:
            if self.active is response:
                self.active = None

    def plan(self) -> tuple[str, str]:
        """("call", account digits) or ("speak", text), from the conversation so far."""
        conversation = self.record.conversation
        if conversation and conversation[-1]["type"] == "function_call_output":
            return "speak", "ok done"
        users = [i for i, e in enumerate(conversation) if e.get("role") == "user"]
        if not users:
            return "speak", "hello"
        said = conversation[users[-1]]["text"]
        answered = any(e["type"] == "function_call" for e in conversation[users[-1] :])
        if said.startswith("9") and self.record.config.get("tools") and not answered:
            return "call", digits_of(said)[1:]
        return "speak", f"you said {said}"

    async def call_tool(self, response: _Response, account: str) -> list[dict[str, Any]]:
        """Stream a function call of the session's first tool."""
        name = str(self.record.config["tools"][0].get("name", "tool"))
        args = json.dumps({"account_id": account})
        ids = {"item_id": self.sim.next_id("item"), "call_id": self.sim.next_id("call")}
        where = {"response_id": response.id, "output_index": 0}
        item = _item(ids["item_id"], "function_call", status="in_progress", name=name)
        item |= {"call_id": ids["call_id"], "arguments": ""}
        await self.emit("response.output_item.added", **where, item=item)
        await self.emit("response.function_call_arguments.delta", **where, **ids, delta=args)
        await self.emit(
            "response.function_call_arguments.done", **where, **ids, name=name, arguments=args
        )
        item = {**item, "status": "completed", "arguments": args}
        await self.emit("response.output_item.done", **where, item=item)
        self.add_to_conversation({**item, "role": "assistant"}, "")
        return [item]

    async def speak(self, response: _Response, text: str) -> tuple[list[dict[str, Any]], str]:
        """Stream a spoken answer in `delta_ms` chunks; stop early when cancelled."""
        item = _item(self.sim.next_id("item"), "message", role="assistant", status="in_progress")
        where = {"response_id": response.id, "item_id": item["id"], "output_index": 0}
        where["content_index"] = 0
        await self.emit("response.output_item.added", **where, item={**item, "content": []})
        await self.emit("response.audio_transcript.delta", **where, delta=text)
        fmt: ModelAudioFormat = self.record.config["output_audio_format"]
        audio, size = self.audio_for(text, fmt), frame_bytes(fmt, self.sim.delta_ms)
        start = asyncio.get_running_loop().time()
        for index, offset in enumerate(range(0, len(audio), size)):
            if response.cancelled.is_set():
                break
            delta = base64.b64encode(audio[offset : offset + size]).decode("ascii")
            await self.emit("response.audio.delta", **where, delta=delta)
            await self.pace(response, start + (index + 1) * self.sim.delta_ms / 1000)
        cancelled = response.cancelled.is_set()
        if not cancelled:
            await self.emit("response.audio.done", **where)
            await self.emit("response.audio_transcript.done", **where, transcript=text)
        item["status"] = "incomplete" if cancelled else "completed"
        item["content"] = [{"type": "audio", "transcript": text}]
        await self.emit("response.output_item.done", **where, item=item)
        self.add_to_conversation(item, text)
        return [item], "cancelled" if cancelled else "completed"

    async def pace(self, response: _Response, due: float) -> None:
        """Yield to the loop, or wait until `due` when pacing (cut short by a cancel)."""
        delay = due - asyncio.get_running_loop().time()
        if not self.sim.pace or delay <= 0:
            await asyncio.sleep(0)
            return
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(response.cancelled.wait(), delay)

    @staticmethod
    def audio_for(text: str, fmt: ModelAudioFormat) -> bytes:
        """What the model says for `text`, in the output format."""
        enc = encoding_of(fmt)
        pcm = utterance_audio(text, enc.rate_hz)
        return pcm16_to_mulaw(pcm) if enc.mulaw else pcm


def _item(item_id: str, item_type: str, **fields: Any) -> dict[str, Any]:
    """A conversation item as the server describes it."""
    return {"id": item_id, "object": "realtime.item", "type": item_type, **fields}


def _check_item(item: dict[str, Any]) -> None:
    """ClientEventError unless `item` is a message, function call or call output."""
    kind = item.get("type")
    if kind not in ITEM_TYPES:
        raise ClientEventError("invalid_value", f"unsupported item type {kind!r}", "item.type")
    if kind == "message":
        if item.get("role") not in ROLES:
            raise ClientEventError("invalid_value", "message role must be user/assistant/system")
        _field(item, "content", list)
    for name in REQUIRED_FIELDS.get(str(kind), ()):
        _field(item, name, str)
