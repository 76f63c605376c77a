"""The simulator's side of one realtime connection: GA client events in, GA server events out.

Every client event is checked against the `openai` package's models, unknown keys included
(`bridges.sim.strict`), and refused with the server's `error` when it does not pass; every
event the simulator sends is checked the same way before it goes out (a failure there is a
bug in the simulator, raised as `SimulatorBug`). On top of the shapes it keeps the rules a
real session enforces: one response at a time, truncation within the audio sent, function
outputs only for calls in the conversation, the voice fixed once audio went out.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from websockets.asyncio.server import ServerConnection
from websockets.exceptions import ConnectionClosed

from bridges.sim.conversation import Conversation, Entry, merge_session
from bridges.sim.responses import Response, ResponseStream
from bridges.sim.speech import transcribe
from bridges.sim.strict import Violation, check_client_event, check_server_event
from bridges.sim.voice import InputAudio

Event = dict[str, Any]


class SimulatorBug(AssertionError):
    """The simulator was about to send an event the GA protocol does not define."""


@dataclass
class SimContext:
    """What a connection needs of its simulator (handed in: this module imports no server)."""

    next_id: Callable[[str], str]
    changed: Callable[[], Awaitable[None]]
    silence_ms: int = 300
    delta_ms: int = 100
    pace: bool = False
    strict_output: bool = True


@dataclass
class SimConnection:
    """What one client connection did and what the simulator answered."""

    index: int
    session_id: str
    model: str
    path: str
    auth: str | None  # "bearer", "api-key" or None: how the client authenticated
    config: dict[str, Any]
    received: list[Event] = field(default_factory=list)
    sent: list[Event] = field(default_factory=list)
    items: list[Event] = field(default_factory=list)  # items the client created
    conversation: Conversation = field(default_factory=Conversation)
    violations: list[Event] = field(default_factory=list)  # the errors refusing client events
    closed: bool = False
    close_code: int | None = None

    def received_types(self) -> list[str]:
        """The `type` of every client event, in order."""
        return [str(e.get("type")) for e in self.received]

    def received_of(self, event_type: str) -> list[Event]:
        """Every client event of one type, in order."""
        return [e for e in self.received if e.get("type") == event_type]

    def sent_of(self, event_type: str) -> list[Event]:
        """Every server event of one type, in order."""
        return [e for e in self.sent if e.get("type") == event_type]


def _sanitized(event: Event, key: str) -> Event:
    """A copy of `event` with the base64 audio under `key` replaced by its byte length."""
    value = event.get(key)
    if not isinstance(value, str):
        return dict(event)
    try:
        size: int | None = len(base64.b64decode(value, validate=True))
    except binascii.Error:
        size = None
    return {**event, key: size}


class ProtocolSession:
    """The protocol of one connection."""

    def __init__(self, ctx: SimContext, ws: ServerConnection, record: SimConnection) -> None:
        self.ctx, self.ws, self.record = ctx, ws, record
        self.audio = InputAudio(record.config, ctx.silence_ms)
        self.stream = ResponseStream(self)
        self.spoke = False  # audio went out: the voice can no longer change
        self.handlers: dict[str, Callable[[Event], Awaitable[None]]] = {
            "session.update": self.on_session_update,
            "input_audio_buffer.append": self.on_append,
            "input_audio_buffer.commit": self.on_commit,
            "input_audio_buffer.clear": self.on_clear,
            "output_audio_buffer.clear": self.on_output_clear,
            "conversation.item.create": self.on_item_create,
            "conversation.item.retrieve": self.on_item_retrieve,
            "conversation.item.delete": self.on_item_delete,
            "conversation.item.truncate": self.on_truncate,
            "response.create": self.on_response_create,
            "response.cancel": self.on_response_cancel,
        }

    @property
    def conversation(self) -> Conversation:
        return self.record.conversation

    async def run(self) -> None:
        """Greet with `session.created`, then handle client events until the socket closes."""
        await self.emit("session.created", session=self.record.config)
        try:
            async for raw in self.ws:
                await self.handle(raw if isinstance(raw, str) else raw.decode("utf-8", "replace"))
        finally:
            await self.stream.stop()

    async def emit(self, event_type: str, **fields: Any) -> None:
        """Check, record (audio as its byte length) and send one server event."""
        event = {"event_id": self.ctx.next_id("event"), "type": event_type, **fields}
        if self.ctx.strict_output:
            try:
                check_server_event(event)
            except Violation as exc:
                raise SimulatorBug(f"{event_type} is not a GA server event: {exc}") from None
        text = json.dumps(event)
        audio = event_type == "response.output_audio.delta"
        self.record.sent.append(_sanitized(event, "delta") if audio else json.loads(text))
        await self.ws.send(text)
        await self.ctx.changed()

    async def refuse(self, violation: Violation, event_id: str | None = None) -> None:
        """Answer a client event with the server's `error`."""
        error = violation.as_error(event_id)
        self.record.violations.append(error)
        await self.emit("error", error=error)

    async def handle(self, raw: str) -> None:
        """Check, record and dispatch one client message; refusals become `error` events."""
        try:
            event, _ = check_client_event(raw)
        except Violation as exc:
            self.record.received.append({"type": None, "raw": raw[:200]})
            await self.refuse(exc)
            await self.ctx.changed()
            return
        self.record.received.append(_sanitized(event, "audio"))
        try:
            await self.handlers[event["type"]](event)
        except Violation as exc:
            await self.refuse(exc, event.get("event_id"))
        await self.ctx.changed()

    # -- session and input audio ----------------------------------------------------------

    async def on_session_update(self, event: Event) -> None:
        """Merge a (checked) realtime session config."""
        session = event["session"]
        if session.get("type") != "realtime":
            raise Violation("invalid_value", "only realtime sessions are simulated", "session.type")
        voice = (session.get("audio") or {}).get("output", {}).get("voice")
        current = self.record.config["audio"]["output"].get("voice")
        if voice is not None and voice != current and self.spoke:
            raise Violation(
                "cannot_update_voice",
                "the voice cannot change once audio was sent",
                "session.audio.output.voice",
            )
        merge_session(self.record.config, session, self.ctx.silence_ms)
        self.audio.configure(self.record.config)
        await self.emit("session.updated", session=self.record.config)

    async def on_append(self, event: Event) -> None:
        """Decode and buffer audio, running the server VAD when it is on."""
        try:
            data = base64.b64decode(event["audio"], validate=True)
        except (binascii.Error, ValueError):
            raise Violation("invalid_value", "audio is not valid base64", "audio") from None
        for kind, at_ms in self.audio.append(data):
            if kind == "speech_started":
                await self.speech_started(at_ms)
            else:
                await self.speech_stopped(at_ms)

    async def speech_started(self, start_ms: int) -> None:
        """Open a user item; a response still speaking is interrupted (unless told not to)."""
        item_id = self.audio.speech_item = self.ctx.next_id("item")
        if self.audio.detection().get("interrupt_response", True):
            self.stream.cancel("turn_detected")
        await self.emit(
            "input_audio_buffer.speech_started", audio_start_ms=start_ms, item_id=item_id
        )

    async def speech_stopped(self, end_ms: int) -> None:
        """Commit the turn and answer it (unless told not to)."""
        item_id = self.audio.speech_item or self.ctx.next_id("item")
        await self.emit("input_audio_buffer.speech_stopped", audio_end_ms=end_ms, item_id=item_id)
        await self.commit()
        if self.audio.detection().get("create_response", True):
            await self.stream.start_next(Response(self.ctx.next_id("resp")))

    async def on_commit(self, event: Event) -> None:
        """Commit the buffer by hand (no response follows: the client asks for one)."""
        if not self.audio.buffer:
            raise Violation("input_audio_buffer_commit_empty", "the audio buffer is empty")
        await self.commit()

    async def commit(self) -> None:
        """Turn the buffer into a user item, transcribed when transcription is on."""
        item_id = self.audio.speech_item or self.ctx.next_id("item")
        pcm, rate_hz = self.audio.take()
        audio_ms = len(pcm) * 1000 // (2 * rate_hz)
        transcript = transcribe(pcm, rate_hz)
        content = [{"type": "input_audio", "transcript": None}]
        item = {
            "id": item_id,
            "object": "realtime.item",
            "type": "message",
            "role": "user",
            "status": "completed",
            "content": content,
        }
        previous = self.conversation.add(Entry(item, transcript, audio_ms))
        await self.emit("input_audio_buffer.committed", item_id=item_id, previous_item_id=previous)
        await self.emit("conversation.item.added", previous_item_id=previous, item=item)
        await self.emit("conversation.item.done", previous_item_id=previous, item=item)
        transcription = self.record.config["audio"]["input"].get("transcription")
        if transcription:
            model = str(transcription.get("model") or "whisper-1")
            await self.stream.transcribed(item_id, transcript, audio_ms, model)

    async def on_clear(self, event: Event) -> None:
        """Empty the audio buffer."""
        self.audio.take()
        await self.emit("input_audio_buffer.cleared")

    async def on_output_clear(self, event: Event) -> None:
        """`output_audio_buffer.clear` exists for WebRTC and SIP only."""
        raise Violation(
            "invalid_value",
            "output_audio_buffer.clear is for WebRTC and SIP connections only",
            "type",
        )

    # -- conversation items ---------------------------------------------------------------

    async def on_item_create(self, event: Event) -> None:
        """Add a client item (checked against the conversation) after the newest one."""
        item = dict(event["item"])
        if item.get("id") and self.conversation.find(str(item["id"])) is not None:
            raise Violation("invalid_value", f"an item with id {item['id']!r} exists", "item.id")
        if item["type"] == "function_call_output" and not self.conversation.has_call(
            str(item["call_id"])
        ):
            raise Violation(
                "invalid_value",
                f"no function call with call_id {item['call_id']!r} in the conversation",
                "item.call_id",
            )
        previous = event.get("previous_item_id")
        if previous is not None and self.conversation.find(str(previous)) is None:
            raise Violation("invalid_value", f"no item {previous!r}", "previous_item_id")
        item.setdefault("id", self.ctx.next_id("item"))
        item.setdefault("object", "realtime.item")
        item.setdefault("status", "completed")
        self.record.items.append(item)
        after = self.conversation.add(Entry(item, _item_text(item)))
        await self.emit("conversation.item.added", previous_item_id=after, item=item)
        await self.emit("conversation.item.done", previous_item_id=after, item=item)

    async def on_item_retrieve(self, event: Event) -> None:
        """Send back an item of the conversation."""
        entry = self._entry(event["item_id"])
        await self.emit("conversation.item.retrieved", item=entry.item)

    async def on_item_delete(self, event: Event) -> None:
        """Remove an item from the conversation."""
        self._entry(event["item_id"])
        self.conversation.remove(event["item_id"])
        await self.emit("conversation.item.deleted", item_id=event["item_id"])

    async def on_truncate(self, event: Event) -> None:
        """Truncate an assistant item's audio at a point within what was sent of it."""
        entry = self._entry(event["item_id"])
        if entry.item.get("role") != "assistant" or event["content_index"] != 0:
            raise Violation(
                "invalid_value", "only an assistant audio part can be truncated", "item_id"
            )
        if not 0 <= event["audio_end_ms"] <= entry.audio_ms:
            raise Violation(
                "invalid_value",
                f"audio_end_ms {event['audio_end_ms']} is past the "
                f"{entry.audio_ms} ms of audio sent",
                "audio_end_ms",
            )
        entry.audio_ms = event["audio_end_ms"]
        await self.emit(
            "conversation.item.truncated",
            item_id=entry.id,
            content_index=0,
            audio_end_ms=event["audio_end_ms"],
        )

    def _entry(self, item_id: str) -> Entry:
        entry = self.conversation.find(item_id)
        if entry is None:
            raise Violation("item_not_found", f"no item {item_id!r}", "item_id")
        return entry

    # -- responses ------------------------------------------------------------------------

    async def on_response_create(self, event: Event) -> None:
        """Start a response unless one is in progress."""
        if self.stream.active:
            raise Violation(
                "conversation_already_has_active_response", "a response is already in progress"
            )
        params = event.get("response") or {}
        await self.stream.start(Response(self.ctx.next_id("resp"), params))

    async def on_response_cancel(self, event: Event) -> None:
        """Stop the response in progress."""
        if not self.stream.active:
            raise Violation("response_cancel_not_active", "no response is in progress")
        self.stream.cancel("client_cancelled")


def _item_text(item: Event) -> str:
    """The text of a client item: its messages' text, or a function call's output."""
    if item["type"] == "function_call_output":
        return str(item.get("output") or "")
    if item["type"] == "function_call":
        return str(item.get("arguments") or "")
    parts = item.get("content") or []
    return " ".join(str(p.get("text") or p.get("transcript") or "") for p in parts).strip()


async def stop_task(task: asyncio.Task[None] | None) -> None:
    """Cancel a task and wait for it (its ConnectionClosed is expected)."""
    if task is None:
        return
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError, ConnectionClosed):
        await task
