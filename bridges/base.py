"""The base bridge: one call between a telephony peer and the realtime model.

It relays audio both ways in-process, keeps the transcript and function calls in the
session state, and hands every state change to the persister (never awaiting storage on the
audio path). Protocol modules subclass it and implement the telephony side's hooks.
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
import time
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any, ClassVar

from bridges.audio import AudioConverter, MediaFormat, ModelAudioFormat
from bridges.errors import ModelUnavailable, ProtocolError
from bridges.functions import FunctionResult
from bridges.realtime import RealtimeClient, history_items
from bridges.runtime import BridgeRuntime
from bridges.transcript import TranscriptManager
from bridges.vad import VadManager
from sessions.errors import RetryableError, SessionExists, SessionLimitReached
from sessions.service import RESUME_REFUSALS
from sessions.state import SessionState, SessionStatus

log = logging.getLogger(__name__)
DTMF_DIGITS = frozenset("0123456789*#ABCD")
# Model events whose handlers only talk to the caller and never wait on the model: the
# realtime client's reader may run them itself (no queue hop on the bot-audio path).
CALLER_ONLY_EVENTS = frozenset({"response.audio.delta"})


class ResumeRefused(ProtocolError):
    """A resume was refused (unknown, ended, expired or unreachable session)."""


@dataclass
class Playback:
    """The bot audio item being played, for truncation on barge-in."""

    item_id: str
    response_id: str | None
    sent_ms: float = 0.0


class BaseBridge(ABC):
    """One call. Subclasses speak a telephony protocol; this class speaks to the model."""

    bridge_type: ClassVar[str] = "base"
    model_audio_format: ClassVar[ModelAudioFormat] = "pcm16"

    def __init__(self, runtime: BridgeRuntime) -> None:
        self.runtime = runtime
        self.state: SessionState | None = None
        self.model: RealtimeClient | None = None
        self.converter: AudioConverter | None = None
        self.transcript: TranscriptManager | None = None
        self.vad = VadManager(runtime.settings.vad_mode, self.model_audio_format)
        self.playback: Playback | None = None
        self.closed = False

    # -- hooks for the telephony side ------------------------------------------------

    @abstractmethod
    async def send_audio(self, chunk: bytes) -> None:
        """Send bot audio (already in the telephony format) to the caller."""

    async def on_playback_started(self, playback: Playback) -> None:
        """The bot started speaking an item."""

    async def on_playback_stopped(self, playback: Playback, interrupted: bool) -> None:
        """The bot's item finished (or was interrupted by the caller)."""

    async def on_speech(self, kind: str) -> None:
        """The caller's speech `started`, `stopped` or was `committed`."""

    async def on_action(self, action: dict[str, Any]) -> None:
        """A function asked the telephony side to act (e.g. transfer the call)."""

    # -- lifecycle --------------------------------------------------------------------

    @property
    def conversation_id(self) -> str | None:
        """The call's conversation id once the session exists."""
        return None if self.state is None else self.state.conversation_id

    async def start_session(
        self, conversation_id: str, media_format: MediaFormat, *, greet: bool = True,
        **fields: Any,
    ) -> SessionState:  # fmt: skip
        """Create the session (ACTIVE, epoch 1), connect the model, and greet the caller."""
        fields = {"bridge_type": self.bridge_type, "media_format": media_format, **fields}
        try:
            state = await self.runtime.service.create_session(conversation_id, **fields)
        except SessionExists:
            raise ProtocolError(f"conversation {conversation_id} is already live") from None
        except SessionLimitReached:
            raise
        except RetryableError as exc:  # storage down: the call goes on, the persister catches up
            log.warning("creating %s without storage (%s); saving later", conversation_id, exc)
            state = SessionState(conversation_id=conversation_id, **fields)
        state.status = SessionStatus.ACTIVE
        state.session_id = state.session_id or self.runtime.instance_id
        await self._attach(state, media_format)
        self.runtime.persister.save_now(state)
        self.runtime.metrics.count("calls_started")
        if greet:
            await self._model().send({"type": "response.create"})
        return state

    async def handle_session_resume(
        self, conversation_id: str, media_format: MediaFormat | None = None
    ) -> SessionState:
        """Claim a stored session (epoch fencing), restore it and replay it into a new model."""
        previous = self.runtime.calls.get(conversation_id)
        if previous is not None and previous is not self:
            await previous.detach()
        await self.runtime.settle()
        await self.runtime.await_handoff(conversation_id)
        try:
            claim = await self.runtime.service.try_resume(
                conversation_id, self.runtime.settings.session_ttl_s
            )
        except RetryableError as exc:
            raise ResumeRefused(f"session store unavailable: {exc}") from None
        if claim.state is None:
            raise ResumeRefused(RESUME_REFUSALS[claim.outcome])
        state = claim.state
        state.session_id = self.runtime.instance_id
        fmt = media_format or state.media_format
        state.media_format = fmt
        self.restore_conversation_context(state.conversation_history, state)
        self.restore_function_calls(state.function_calls, state)
        await self._attach(state, fmt)  # type: ignore[arg-type]
        replayed = await self._model().replay_history(self._replay_items())
        state.metadata = {**state.metadata, "last_resume_replayed_items": replayed}
        self.runtime.persister.save_now(state)
        self.runtime.metrics.count("resumes")
        log.info("resumed %s: %d turns, %d function calls, %d items replayed", conversation_id,
                 len(state.conversation_history), len(state.function_calls), replayed)  # fmt: skip
        return state

    def restore_conversation_context(
        self, history: list[dict[str, Any]], state: SessionState | None = None
    ) -> None:
        """Take over a stored transcript (the model gets it by replay)."""
        target = state or self.state
        if target is not None and target.conversation_history is not history:
            target.conversation_history = list(history)

    def restore_function_calls(
        self, calls: list[dict[str, Any]], state: SessionState | None = None
    ) -> None:
        """Take over stored function calls and their results."""
        target = state or self.state
        if target is not None and target.function_calls is not calls:
            target.function_calls = list(calls)

    async def end_call(self, reason: str) -> None:
        """End the session (terminal): final state and archive go out through the persister."""
        state = self.state
        if state is None or self.closed:
            return
        self.closed = True
        self.runtime.persister.end(state, reason)
        self.runtime.metrics.count("calls_ended")
        await self._release()

    async def detach(self) -> None:
        """The telephony side went away without ending: keep the session PAUSED for a resume."""
        state = self.state
        if state is None or self.closed:
            return
        self.closed = True
        if state.status is not SessionStatus.ENDED:
            state.set_status(SessionStatus.PAUSED)
            self.runtime.persister.save_now(state)
        await self._release()

    # -- audio and model events -------------------------------------------------------------

    async def caller_audio(self, chunk: bytes, received_s: float) -> None:
        """Relay one frame of caller audio (telephony format) to the model."""
        if self.converter is None or self.model is None or self.closed:
            raise ProtocolError("audio before the session started")
        audio = self.converter.to_model(chunk)
        await self.model.append_audio(audio)
        self.runtime.metrics.relayed("to_model", time.perf_counter() - received_s)
        self.runtime.metrics.count("frames_in")
        for kind in self.vad.feed(audio):
            await self._local_vad(kind)

    async def caller_event(self, text: str) -> None:
        """A non-speech caller event (DTMF): recorded and told to the model."""
        if self.transcript is None:
            raise ProtocolError("event before the session started")
        self.transcript.event(text)
        item = {
            "type": "message",
            "role": "user",
            "content": [{"type": "input_text", "text": text}],
        }
        await self._model().send({"type": "conversation.item.create", "item": item})

    async def on_model_event(self, event: dict[str, Any]) -> None:
        """Handle one server event of the realtime model (timed from its arrival)."""
        received_s = self.model.event_received_s if self.model else time.perf_counter()
        kind = event.get("type")
        handler = _HANDLERS.get(str(kind))
        if handler is not None:
            await handler(self, event, received_s)

    async def _on_session_created(self, event: dict[str, Any], _: float) -> None:
        session = event.get("session") or {}
        if self.state is not None and isinstance(session, dict) and session.get("id"):
            self.state.openai_session_id = str(session["id"])
            self.runtime.persister.save(self.state)

    async def _on_speech_started(self, event: dict[str, Any], _: float) -> None:
        if self.playback is not None:
            await self._barge_in()
        await self.on_speech("started")

    async def _on_speech_stopped(self, event: dict[str, Any], _: float) -> None:
        await self.on_speech("stopped")

    async def _on_committed(self, event: dict[str, Any], _: float) -> None:
        await self.on_speech("committed")

    async def _on_transcription(self, event: dict[str, Any], _: float) -> None:
        if self.transcript is not None:
            self.transcript.caller(str(event.get("transcript", "")), event.get("item_id"))

    async def _on_response_created(self, event: dict[str, Any], _: float) -> None:
        if self.state is not None:
            self.state.active_response_id = (event.get("response") or {}).get("id")

    async def _on_audio_delta(self, event: dict[str, Any], received_s: float) -> None:
        if self.converter is None or self.closed:
            return
        try:
            audio = base64.b64decode(str(event.get("delta", "")), validate=True)
        except (binascii.Error, ValueError):
            self.runtime.metrics.count("errors")
            return
        item_id = str(event.get("item_id", ""))
        playback = self.playback
        if playback is None or playback.item_id != item_id:
            playback = self.playback = Playback(item_id, event.get("response_id"))
            await self.on_playback_started(playback)
        playback.sent_ms += len(audio) * 1000 / _bytes_per_s(self.model_audio_format)
        await self.send_audio(self.converter.from_model(audio))
        self.runtime.metrics.relayed("to_caller", time.perf_counter() - received_s)
        self.runtime.metrics.count("frames_out")

    async def _on_audio_done(self, event: dict[str, Any], _: float) -> None:
        playback, self.playback = self.playback, None
        if playback is not None:
            await self.on_playback_stopped(playback, interrupted=False)

    async def _on_bot_transcript(self, event: dict[str, Any], _: float) -> None:
        if self.transcript is not None:
            self.transcript.bot(str(event.get("transcript", "")), event.get("item_id"))

    async def _on_function_call(self, event: dict[str, Any], _: float) -> None:
        if self.state is None:
            return
        result = await self.runtime.registry.call(
            str(event.get("call_id", "")), str(event.get("name", "")), event.get("arguments", "")
        )
        await self._record_function_result(result)

    async def _on_response_done(self, event: dict[str, Any], _: float) -> None:
        if self.state is not None:
            self.state.active_response_id = None
        status = (event.get("response") or {}).get("status")
        if status == "cancelled" and self.playback is not None:
            playback, self.playback = self.playback, None
            await self.on_playback_stopped(playback, interrupted=True)

    async def _on_error(self, event: dict[str, Any], _: float) -> None:
        error = event.get("error") or {}
        message = str(error.get("message", error)) if isinstance(error, dict) else str(error)
        self.runtime.metrics.count("model_errors")
        log.warning("model error on %s: %s", self.conversation_id, message)
        if self.state is not None:
            self.state.last_error = f"model: {message}"[:500]
            self.state.error_count += 1
            self.runtime.persister.save(self.state)

    async def _on_reconnected(self, event: dict[str, Any], _: float) -> None:
        self.runtime.metrics.count("model_reconnects")
        self.playback = None
        self.vad.reset()

    async def _on_failed(self, event: dict[str, Any], _: float) -> None:
        if self.state is not None and not self.closed:
            self.state.set_error(f"realtime model unavailable: {event.get('error')}")
            await self.end_call("model unavailable")

    # -- helpers ----------------------------------------------------------------------------

    async def _record_function_result(self, result: FunctionResult) -> None:
        assert self.state is not None
        self.state.add_function_call(result.record())
        self.runtime.persister.save(self.state)
        self.runtime.metrics.count("function_calls")
        output = {"call_id": result.call_id, "output": _json_text(result.result)}
        await self._model().send(
            {"type": "conversation.item.create", "item": {"type": "function_call_output", **output}}
        )
        await self._model().send({"type": "response.create"})
        if result.action is not None:
            await self.on_action(result.action)

    async def _barge_in(self) -> None:
        playback, self.playback = self.playback, None
        if playback is None:
            return
        self.runtime.metrics.count("barge_ins")
        await self.on_playback_stopped(playback, interrupted=True)
        truncate = {"type": "conversation.item.truncate", "item_id": playback.item_id,
                    "content_index": 0, "audio_end_ms": int(playback.sent_ms)}  # fmt: skip
        await self._model().send(truncate)

    async def _local_vad(self, kind: str) -> None:
        if kind == "speech_started":
            await self._on_speech_started({}, 0.0)
        elif kind == "speech_stopped":
            await self.on_speech("stopped")
            await self._model().send({"type": "input_audio_buffer.commit"})
            await self._model().send({"type": "response.create"})

    async def _attach(self, state: SessionState, media_format: MediaFormat) -> None:
        self.state = state
        self.converter = AudioConverter(media_format, self.model_audio_format)
        self.transcript = TranscriptManager(state, self.runtime.persister.save)
        self.runtime.calls[state.conversation_id] = self
        config = self.runtime.realtime_config(
            input_audio_format=self.model_audio_format,
            output_audio_format=self.model_audio_format,
            turn_detection=self.vad.turn_detection,
        )
        self.model = RealtimeClient(
            config, self.on_model_event, self._replay_items, inline_events=CALLER_ONLY_EVENTS
        )
        try:
            await self.model.connect()
        except ModelUnavailable:
            self.runtime.calls.pop(state.conversation_id, None)
            raise

    def _replay_items(self) -> list[dict[str, Any]]:
        if self.state is None:
            return []
        return history_items(self.state.conversation_history, self.state.function_calls)

    def _model(self) -> RealtimeClient:
        if self.model is None:
            raise ProtocolError("no realtime session for this call yet")
        return self.model

    async def _release(self) -> None:
        cid = self.conversation_id
        if cid is not None and self.runtime.calls.get(cid) is self:
            del self.runtime.calls[cid]
        if self.model is not None:
            await self.model.close()


def _bytes_per_s(fmt: ModelAudioFormat) -> int:
    return 24_000 * 2 if fmt == "pcm16" else 8000


def _json_text(value: Any) -> str:
    return json.dumps(value, default=str)


_HANDLERS = {
    "session.created": BaseBridge._on_session_created,
    "input_audio_buffer.speech_started": BaseBridge._on_speech_started,
    "input_audio_buffer.speech_stopped": BaseBridge._on_speech_stopped,
    "input_audio_buffer.committed": BaseBridge._on_committed,
    "conversation.item.input_audio_transcription.completed": BaseBridge._on_transcription,
    "response.created": BaseBridge._on_response_created,
    "response.audio.delta": BaseBridge._on_audio_delta,
    "response.audio.done": BaseBridge._on_audio_done,
    "response.audio_transcript.done": BaseBridge._on_bot_transcript,
    "response.function_call_arguments.done": BaseBridge._on_function_call,
    "response.done": BaseBridge._on_response_done,
    "error": BaseBridge._on_error,
    "client.reconnected": BaseBridge._on_reconnected,
    "client.failed": BaseBridge._on_failed,
}
