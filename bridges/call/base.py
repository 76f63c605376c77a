"""The base bridge: one call between a telephony peer and the realtime model.

It relays audio both ways in-process, keeps the transcript and function calls in the
session state, and hands every state change to the persister (never awaiting storage on the
audio path). Protocol modules subclass it and implement the telephony side's hooks; what the
model says and does arrives through `bridges.call.turns.ModelTurns`.
"""

from __future__ import annotations

import logging
import time
from abc import ABC, abstractmethod
from typing import Any, ClassVar

from bridges.audio import AudioConverter, MediaFormat, model_format_for
from bridges.call.rollover import Rollover
from bridges.call.runtime import BridgeRuntime
from bridges.call.transcript import TranscriptManager
from bridges.call.turns import CALLER_ONLY_EVENTS, ModelTurns, Playback
from bridges.call.vad import VadManager
from bridges.errors import InstanceFull, ModelRefused, ModelUnavailable, ProtocolError
from bridges.model import RealtimeClient, history_items
from sessions.errors import RetryableError, SessionExists, SessionLimitReached
from sessions.service import RESUME_REFUSALS
from sessions.state import SessionState, SessionStatus
from sessions.usage import ModelInfo

log = logging.getLogger(__name__)
DTMF_DIGITS = frozenset("0123456789*#ABCD")

__all__ = ["CALLER_ONLY_EVENTS", "DTMF_DIGITS", "BaseBridge", "Playback", "ResumeRefused"]


class ResumeRefused(ProtocolError):
    """A resume was refused (unknown, ended, expired or unreachable session)."""


class BaseBridge(ModelTurns, ABC):
    """One call. Subclasses speak a telephony protocol; this class speaks to the model."""

    bridge_type: ClassVar[str] = "base"

    def __init__(self, runtime: BridgeRuntime) -> None:
        super().__init__()
        self.runtime = runtime
        self.state: SessionState | None = None
        self.model: RealtimeClient | None = None
        self.converter: AudioConverter | None = None
        self.transcript: TranscriptManager | None = None
        self.vad = VadManager(runtime.settings.vad_mode, "audio/pcm")
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

    async def on_hang_up(self, reason: str, failed: bool) -> None:
        """The bot ended the call (`failed`: because of an error): tell the telephony side."""

    # -- lifecycle --------------------------------------------------------------------

    @property
    def conversation_id(self) -> str | None:
        """The call's conversation id once the session exists."""
        return None if self.state is None else self.state.conversation_id

    async def start_session(
        self, conversation_id: str, media_format: MediaFormat, *, greet: bool = True,
        **fields: Any,
    ) -> SessionState:  # fmt: skip
        """Create the session (ACTIVE, epoch 1), connect the model, and greet the caller.

        When the model cannot be reached or refuses the session, the call is ended (status
        ERROR, archived) and the error is raised for the telephony side to refuse the call.
        """
        self._check_capacity()
        # The first write names this instance as the live call's holder.
        fields = {"bridge_type": self.bridge_type, "media_format": media_format,
                  "status": SessionStatus.ACTIVE, "session_id": self.runtime.instance_id,
                  **fields}  # fmt: skip
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
        try:
            await self._attach(state, media_format)
        except (ModelUnavailable, ModelRefused) as exc:
            self._fail_start(state, exc)
            raise
        self.runtime.persister.save_now(state)
        self.runtime.metrics.count("calls_started")
        if greet:
            await self.request_response()
        return state

    async def handle_session_resume(
        self, conversation_id: str, media_format: MediaFormat | None = None
    ) -> SessionState:
        """Claim a stored session (epoch fencing), restore it and replay it into a new model."""
        previous = self.runtime.calls.get(conversation_id)
        if previous is not None and previous is not self:
            await previous.detach()
        self._check_capacity()
        await self.runtime.settle()
        silent = await self.runtime.handover.await_handoff(conversation_id)
        try:
            claim = await self.runtime.service.try_resume(
                conversation_id, self.runtime.settings.session_ttl_s,
                holder=self.runtime.instance_id,
            )  # fmt: skip
        except RetryableError as exc:
            raise ResumeRefused(f"session store unavailable: {exc}") from None
        if claim.state is None:
            raise ResumeRefused(RESUME_REFUSALS[claim.outcome])
        state = claim.state
        state.session_id = self.runtime.instance_id
        if silent is not None:
            log.warning("resume of %s: %s never handed the call over within %d ms; resumed "
                        "with what was stored: %d turns, %d function calls (later saves of %s "
                        "add the turns they alone have)", conversation_id, silent,
                        self.runtime.settings.resume_handoff_ms, len(state.conversation_history),
                        len(state.function_calls), silent)  # fmt: skip
        fmt: MediaFormat = media_format or state.media_format  # type: ignore[assignment]
        state.media_format = fmt
        try:
            await self._attach(state, fmt)
        except (ModelUnavailable, ModelRefused):
            state.set_status(SessionStatus.PAUSED)  # claimed, not served: resumable elsewhere
            self.runtime.persister.save_now(state)
            raise
        assert self.model is not None
        replayed = await self.model.replay_history(self._replay_items())
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
        if self._record_end(reason):
            await self._release()
            await self._store_end()

    async def hang_up(self, reason: str) -> None:
        """The bot ends the call: end the session, hang up on the caller, close the model."""
        failed = self.state is not None and self.state.status is SessionStatus.ERROR
        if self._record_end(reason):
            await self.on_hang_up(reason, failed)
            await self._release()
            await self._store_end()

    async def _store_end(self) -> None:
        if self.state is not None:
            await self.runtime.handover.store_end(self.state)

    def _record_end(self, reason: str) -> bool:
        """Record the end (once); False when there is nothing to end."""
        state = self.state
        if state is None or self.closed:
            return False
        self.closed = True
        self.runtime.persister.end(state, reason)
        self.runtime.metrics.count("calls_ended")
        return True

    async def detach(self) -> None:
        """The telephony side went away without ending: hand the call over PAUSED.

        The model session closes first (nothing more changes the state), then the state and
        its whole history are written straight to storage, and only then is the call released.
        """
        state = self.state
        if state is None or self.closed:
            return
        self.closed = True
        if self.rollover is not None:
            await self.rollover.stop()
        if self.model is not None:
            await self.model.close()
        if state.status is not SessionStatus.ENDED:
            state.set_status(SessionStatus.PAUSED)
            await self.runtime.handover.hand_off(state)
        await self._release()

    # -- caller audio and events --------------------------------------------------------------

    async def caller_audio(self, chunk: bytes, received_s: float) -> None:
        """Relay one frame of caller audio (telephony format) to the model."""
        if self.converter is None or self.model is None or self.closed:
            raise ProtocolError("audio before the session started")
        audio = self.converter.to_model(chunk)
        await self.model.append_audio(audio)
        self.runtime.metrics.relayed("to_model", time.perf_counter() - received_s)
        self.runtime.metrics.count("frames_in")
        for kind in self.vad.feed(audio):
            await self.local_vad(kind)

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
        await self.model_client().send({"type": "conversation.item.create", "item": item})

    # -- helpers ----------------------------------------------------------------------------

    async def _attach(self, state: SessionState, media_format: MediaFormat) -> None:
        """Connect a model session for `state`; only then is the call this bridge's."""
        model_format = model_format_for(media_format)
        vad = VadManager(self.runtime.settings.vad_mode, model_format)
        config = self.runtime.realtime_config(
            input_format=model_format, output_format=model_format,
            turn_detection=vad.turn_detection,
        )  # fmt: skip
        model = RealtimeClient(
            config, self.on_model_event, self._replay_items, inline_events=CALLER_ONLY_EVENTS
        )
        await model.connect()
        self.state, self.model, self.vad = state, model, vad
        self.rollover = Rollover(self)
        self.rollover.start()
        self.converter = AudioConverter(media_format, model_format)
        self.transcript = TranscriptManager(state, self.runtime.persister.save)
        self.calls_answered = {str(c["call_id"]) for c in state.function_calls if c.get("call_id")}
        previous = state.realtime.sessions if state.realtime is not None else 0
        state.realtime = ModelInfo(
            provider=config.provider, model=config.model, voice=config.voice,
            input_format=model_format, output_format=model_format,
            transcription_model=config.transcription_model, sessions=previous,
        )  # fmt: skip
        self.runtime.calls[state.conversation_id] = self
        self.runtime.persister.track(state.conversation_id)

    def _check_capacity(self) -> None:
        limit = self.runtime.settings.max_calls
        if len(self.runtime.calls) >= limit:
            self.runtime.metrics.count("calls_refused_full")
            raise InstanceFull(f"this bridge instance holds {limit} calls (MAX_CALLS); "
                               "try another instance")  # fmt: skip

    def _fail_start(self, state: SessionState, exc: Exception) -> None:
        """A call whose model never came up: recorded, ended and archived, never left open."""
        self.closed = True
        refused = isinstance(exc, ModelRefused)
        log.warning("call %s could not start: %s", state.conversation_id, exc)
        state.set_error(str(exc)[:500])
        self.runtime.persister.end(state, "model refused" if refused else "model unavailable")
        self.runtime.metrics.count("calls_failed")

    def _replay_items(self) -> list[dict[str, Any]]:
        if self.state is None:
            return []
        return history_items(self.state.conversation_history, self.state.function_calls)

    def model_client(self) -> RealtimeClient:
        """The call's model session; ProtocolError before there is one."""
        if self.model is None:
            raise ProtocolError("no realtime session for this call yet")
        return self.model

    async def _release(self) -> None:
        cid = self.conversation_id
        if cid is not None and self.runtime.calls.get(cid) is self:
            del self.runtime.calls[cid]
            self.runtime.persister.forget(cid, stored=False)
        if self.rollover is not None:
            await self.rollover.stop()
        if self.model is not None:
            await self.model.close()
