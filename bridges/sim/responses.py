"""The simulator's responses: each one streamed as a real GA server streams it, as a task.

A spoken answer: `response.created`, `rate_limits.updated`, the output item and its content
part, transcript and audio deltas, their `.done` events, `response.done` with its usage. A
function call: the call item with its arguments. A text-only answer (`output_modalities`
["text"]): `response.output_text.*` instead of audio. A response can be cancelled (by the
client, or by the caller speaking) while it streams.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
from dataclasses import dataclass, field
from typing import Any, Protocol

from websockets.exceptions import ConnectionClosed

from bridges.audio import bytes_per_second, encoding_of, frame_bytes, pcm16_to_mulaw
from bridges.sim.conversation import (
    AS_MEDIA,
    Conversation,
    Entry,
    format_type,
    response_usage,
    transcription_usage,
)
from bridges.sim.speech import utterance_audio

Event = dict[str, Any]
RATE_LIMITS = [
    {"name": "requests", "limit": 1000, "remaining": 999, "reset_seconds": 60.0},
    {"name": "tokens", "limit": 100_000, "remaining": 99_000, "reset_seconds": 60.0},
]


class Session(Protocol):
    """What a response stream needs of its connection."""

    spoke: bool

    @property
    def conversation(self) -> Conversation: ...
    @property
    def ctx(self) -> Any: ...
    @property
    def record(self) -> Any: ...
    async def emit(self, event_type: str, **fields: Any) -> None: ...


@dataclass
class Response:
    """One response: its id, what the client asked of it, and whether it was cancelled."""

    id: str
    params: dict[str, Any] = field(default_factory=dict)
    cancelled: asyncio.Event = field(default_factory=asyncio.Event)
    reason: str | None = None
    task: asyncio.Task[None] | None = None


class ResponseStream:
    """Runs at most one response at a time for a session."""

    def __init__(self, session: Session) -> None:
        self.session = session
        self.current: Response | None = None
        self.queued: Response | None = None  # a VAD turn's response, after the current one
        self.cached_tokens = 0  # input tokens an earlier response already paid for

    @property
    def active(self) -> bool:
        return self.current is not None

    async def start(self, response: Response) -> None:
        """Stream `response` as its own task (so that it can be cancelled)."""
        self.current = response
        response.task = asyncio.create_task(self._run(response))

    async def start_next(self, response: Response) -> None:
        """Start `response` now, or as soon as the current one (being cancelled) has ended."""
        if self.current is None:
            await self.start(response)
        else:
            self.queued = response

    def cancel(self, reason: str) -> None:
        """Stop the response in progress, if any."""
        if self.current is not None and not self.current.cancelled.is_set():
            self.current.reason = reason
            self.current.cancelled.set()

    async def stop(self) -> None:
        """The connection ended: stop streaming."""
        self.queued = None
        if self.current is not None and self.current.task is not None:
            self.current.task.cancel()
            with contextlib.suppress(asyncio.CancelledError, ConnectionClosed):
                await self.current.task

    async def transcribed(self, item_id: str, transcript: str, audio_ms: int, model: str) -> None:
        """The transcription of a committed user item: a delta, then the completed text."""
        where = {"item_id": item_id, "content_index": 0}
        emit = self.session.emit
        await emit("conversation.item.input_audio_transcription.delta", **where, delta=transcript)
        await emit(
            "conversation.item.input_audio_transcription.completed",
            **where,
            transcript=transcript,
            usage=transcription_usage(model, audio_ms, transcript),
        )

    async def _run(self, response: Response) -> None:
        session = self.session
        config = session.record.config
        modalities = response.params.get("output_modalities") or config["output_modalities"]
        base = {
            "id": response.id,
            "object": "realtime.response",
            "conversation_id": "conv_1",
            "output_modalities": modalities,
        }
        try:
            await session.emit(
                "response.created", response={**base, "status": "in_progress", "output": []}
            )
            await session.emit("rate_limits.updated", rate_limits=RATE_LIMITS)
            kind, value = session.conversation.plan(config.get("tools") or [])
            if kind == "call":
                entry = await self._call_tool(response, value)
            elif modalities == ["text"]:
                entry = await self._write(response, value)
            else:
                entry = await self._speak(response, value)
            await session.emit("response.done", response={**base, **self._done(response, entry)})
        except ConnectionClosed:
            pass
        finally:
            if self.current is response:
                self.current = None
                queued, self.queued = self.queued, None
                if queued is not None:
                    await self.start(queued)

    def _done(self, response: Response, entry: Entry) -> Event:
        """The final fields of a response: status, output and usage."""
        cancelled = response.cancelled.is_set()
        usage = response_usage(
            self.session.conversation, self.cached_tokens, entry.text, entry.audio_ms
        )
        self.cached_tokens = usage["input_tokens"]
        done: Event = {
            "status": "cancelled" if cancelled else "completed",
            "output": [entry.item],
            "usage": usage,
        }
        if cancelled:
            done["status_details"] = {"type": "cancelled", "reason": response.reason}
        return done

    async def _open_item(self, response: Response, item: Event, text: str = "") -> Entry:
        """Add an output item to the response and to the conversation."""
        entry = Entry(item, text)
        previous = self.session.conversation.add(entry)
        where = {"response_id": response.id, "output_index": 0}
        await self.session.emit("response.output_item.added", **where, item=item)
        await self.session.emit("conversation.item.added", previous_item_id=previous, item=item)
        return entry

    async def _close_item(self, response: Response, entry: Entry) -> None:
        where = {"response_id": response.id, "output_index": 0}
        await self.session.emit("response.output_item.done", **where, item=entry.item)
        await self.session.emit("conversation.item.done", item=entry.item)

    async def _call_tool(self, response: Response, account: str) -> Entry:
        """Stream a function call of the session's first tool."""
        tools = self.session.record.config["tools"]
        name = str(tools[0].get("name") or "tool")
        arguments = json.dumps({"account_id": account})
        item_id, call_id = self.session.ctx.next_id("item"), self.session.ctx.next_id("call")
        item = {
            "id": item_id,
            "object": "realtime.item",
            "type": "function_call",
            "status": "in_progress",
            "name": name,
            "call_id": call_id,
            "arguments": "",
        }
        entry = await self._open_item(response, item)
        where = {
            "response_id": response.id,
            "output_index": 0,
            "item_id": item_id,
            "call_id": call_id,
        }
        emit = self.session.emit
        await emit("response.function_call_arguments.delta", **where, delta=arguments)
        await emit("response.function_call_arguments.done", **where, name=name, arguments=arguments)
        entry.item = {**item, "status": "completed", "arguments": arguments}
        entry.text = arguments
        await self._close_item(response, entry)
        return entry

    async def _write(self, response: Response, text: str) -> Entry:
        """Stream a text-only answer."""
        item = _assistant(self.session.ctx.next_id("item"))
        entry = await self._open_item(response, item, text)
        where = _part_of(response, item)
        emit = self.session.emit
        await emit("response.content_part.added", **where, part={"type": "text", "text": ""})
        await emit("response.output_text.delta", **where, delta=text)
        await emit("response.output_text.done", **where, text=text)
        await emit("response.content_part.done", **where, part={"type": "text", "text": text})
        entry.item = {
            **item,
            "status": "completed",
            "content": [{"type": "output_text", "text": text}],
        }
        await self._close_item(response, entry)
        return entry

    async def _speak(self, response: Response, text: str) -> Entry:
        """Stream a spoken answer in `delta_ms` chunks; stop early when cancelled."""
        session, ctx = self.session, self.session.ctx
        item = _assistant(ctx.next_id("item"))
        entry = await self._open_item(response, item, text)
        where = _part_of(response, item)
        part = {"type": "audio", "transcript": ""}
        await session.emit("response.content_part.added", **where, part=part)
        await session.emit("response.output_audio_transcript.delta", **where, delta=text)
        fmt = format_type(session.record.config["audio"]["output"].get("format"))
        media = AS_MEDIA.get(fmt, "raw/lpcm16_24")
        audio, size = _audio_for(text, media), frame_bytes(media, ctx.delta_ms)
        start = asyncio.get_running_loop().time()
        for index, offset in enumerate(range(0, len(audio), size)):
            if response.cancelled.is_set():
                break
            chunk = audio[offset : offset + size]
            session.spoke = True
            await session.emit(
                "response.output_audio.delta",
                **where,
                delta=base64.b64encode(chunk).decode("ascii"),
            )
            entry.audio_ms += len(chunk) * 1000 // bytes_per_second(media)
            await self._pace(response, start + (index + 1) * ctx.delta_ms / 1000)
        cancelled = response.cancelled.is_set()
        if not cancelled:
            await session.emit("response.output_audio.done", **where)
            await session.emit("response.output_audio_transcript.done", **where, transcript=text)
        await session.emit(
            "response.content_part.done", **where, part={"type": "audio", "transcript": text}
        )
        entry.item = {
            **item,
            "status": "incomplete" if cancelled else "completed",
            "content": [{"type": "output_audio", "transcript": text}],
        }
        await self._close_item(response, entry)
        return entry

    async def _pace(self, response: Response, due: float) -> None:
        """Yield to the loop, or wait until `due` when pacing (cut short by a cancel)."""
        delay = due - asyncio.get_running_loop().time()
        if not self.session.ctx.pace or delay <= 0:
            await asyncio.sleep(0)
            return
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(response.cancelled.wait(), delay)


def _part_of(response: Response, item: Event) -> Event:
    """The fields that place a content-part event: response, output item, content part."""
    return {"response_id": response.id, "output_index": 0, "item_id": item["id"],
            "content_index": 0}  # fmt: skip


def _assistant(item_id: str) -> Event:
    return {
        "id": item_id,
        "object": "realtime.item",
        "type": "message",
        "role": "assistant",
        "status": "in_progress",
        "content": [],
    }


def _audio_for(text: str, media: Any) -> bytes:
    """What the model says for `text`, in the output format."""
    enc = encoding_of(media)
    pcm = utterance_audio(text, enc.rate_hz)
    return pcm16_to_mulaw(pcm) if enc.mulaw else pcm
