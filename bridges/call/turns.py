"""What the model says and does during a call: the bridge's handlers of GA server events.

`ModelTurns` is the model half of `BaseBridge`: bot audio to the caller, barge-in, the
transcript of both sides, function calls and their outputs, responses and their usage, and
the model's errors. Server event types it has no handler for are logged at debug and ignored
(the server adds event types over time).
"""

from __future__ import annotations

import binascii
import json
import logging
import time
from abc import abstractmethod
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from bridges.audio import AudioConverter, bytes_per_second, from_base64
from bridges.call.functions import FunctionResult
from bridges.call.transcript import TranscriptManager
from bridges.call.vad import VadKind, VadManager
from bridges.model import events
from bridges.model.events import response_summary, server_error, transcription_usage
from bridges.model.refusals import scrub
from sessions.state import SessionState
from sessions.usage import ModelUsage

if TYPE_CHECKING:
    from bridges.call.rollover import Rollover
    from bridges.call.runtime import BridgeRuntime
    from bridges.model import RealtimeClient

log = logging.getLogger(__name__)
Event = dict[str, Any]


@dataclass
class Playback:
    """The bot audio item being played, for truncation on barge-in."""

    item_id: str
    response_id: str | None
    sent_ms: float = 0.0


class ModelTurns:
    """Handlers of the model's server events for one call (mixed into `BaseBridge`)."""

    runtime: BridgeRuntime
    state: SessionState | None
    model: RealtimeClient | None
    converter: AudioConverter | None
    transcript: TranscriptManager | None
    vad: VadManager
    closed: bool

    def __init__(self) -> None:
        self.playback: Playback | None = None
        self.calls_answered: set[str] = set()
        self.response_active = False  # a response is in progress on the model
        self.response_requested = False  # a response.create is sent, not yet created
        self.response_wanted = False  # a response.create waits for the current one to end
        self.turn_open = False  # the caller spoke and no response has begun for it yet
        self.text_only_noted = False
        self.rollover: Rollover | None = None

    # hooks the telephony side implements (see BaseBridge)
    @abstractmethod
    async def send_audio(self, chunk: bytes) -> None: ...
    @abstractmethod
    async def on_playback_started(self, playback: Playback) -> None: ...
    @abstractmethod
    async def on_playback_stopped(self, playback: Playback, interrupted: bool) -> None: ...
    @abstractmethod
    async def on_speech(self, kind: str) -> None: ...
    @abstractmethod
    async def on_action(self, action: dict[str, Any]) -> None: ...
    @abstractmethod
    async def hang_up(self, reason: str) -> None: ...
    @abstractmethod
    def model_client(self) -> RealtimeClient: ...

    async def on_model_event(self, event: Event) -> None:
        """Handle one server event of the realtime model (timed from its arrival)."""
        received_s = self.model.event_received_s if self.model else time.perf_counter()
        kind = str(event.get("type"))
        handler = _HANDLERS.get(kind)
        if handler is None:
            if kind not in IGNORED:
                log.debug("ignoring model event %.80r: no handler (new or not needed)", kind)
            return
        await handler(self, event, received_s)
        if self.rollover is not None and kind != events.AUDIO_DELTA:
            self.rollover.boundary.set()  # the rollover, if it waits, looks again

    def at_boundary(self) -> bool:
        """A turn boundary: no response in progress or asked for, no turn waiting, no audio."""
        busy = self.response_active or self.response_requested or self.response_wanted
        return not (busy or self.turn_open or self.playback is not None)

    def history_marker(self) -> tuple[int, int]:
        """Changes whenever the history does (it only grows)."""
        if self.state is None:
            return (0, 0)
        return (len(self.state.conversation_history), len(self.state.function_calls))

    async def request_response(self) -> None:
        """Ask the model to respond, or once the response in progress is done."""
        if self.response_active or self.response_requested:
            self.response_wanted = True
            return
        self.response_requested = True
        await self.model_client().send({"type": "response.create"})

    async def local_vad(self, kind: VadKind) -> None:
        """Local VAD: barge in when the caller starts; commit and respond when they stop."""
        if kind == "speech_started":
            await self._on_speech_started({}, 0.0)
        elif kind == "speech_stopped":
            await self.on_speech("stopped")
            await self.model_client().send({"type": "input_audio_buffer.commit"})
            await self.request_response()

    # -- session and errors ---------------------------------------------------------------

    async def _on_session_created(self, event: Event, _: float) -> None:
        session = event.get("session")
        if self.state is None or not isinstance(session, dict):
            return
        if session.get("id"):
            self.state.openai_session_id = str(session["id"])
        if self.state.realtime is not None:
            sessions = self.state.realtime.sessions + 1
            self.state.realtime = self.state.realtime.model_copy(update={"sessions": sessions})
        self.runtime.persister.save(self.state)

    async def _on_error(self, event: Event, _: float) -> None:
        error = server_error(event)
        message = scrub(error.message, self.model_client().config) if self.model else ""
        if error.code == "session_expired":
            log.info(
                "model session of %s expired (%s); a new one follows",
                self.state.conversation_id if self.state else None,
                message,
            )
            return
        self.runtime.metrics.count("model_errors")
        log.warning(
            "model error on %s: %s %s",
            self.state.conversation_id if self.state else None,
            error.code or error.type,
            message,
        )
        if self.state is not None:
            self.state.last_error = f"model: {error.code or error.type}: {message}"[:500]
            self.state.error_count += 1
            self.runtime.persister.save(self.state)

    async def _on_rolled_over(self, event: Event, _: float) -> None:
        self.runtime.metrics.count("model_rollovers")
        state = self.state
        if state is not None and state.realtime is not None:
            rollovers = state.realtime.rollovers + 1
            state.realtime = state.realtime.model_copy(update={"rollovers": rollovers})
            self.runtime.persister.save(state)
        log.info("call %s: model session rolled over from %s to %s (%s items replayed)",
                 state.conversation_id if state else None, event.get("previous"),
                 event.get("session_id"), event.get("replayed"))  # fmt: skip

    async def _on_reconnected(self, event: Event, _: float) -> None:
        self.runtime.metrics.count("model_reconnects")
        self.playback = None
        self.response_active = self.response_requested = self.response_wanted = False
        self.turn_open = False
        self.vad.reset()

    async def _on_failed(self, event: Event, _: float) -> None:
        if self.state is None or self.closed:
            return
        refused = bool(event.get("refused"))
        self.runtime.metrics.count("model_refusals" if refused else "model_failures")
        self.state.set_error(str(event.get("error"))[:500])
        await self.hang_up("model refused" if refused else "model unavailable")

    async def _on_rate_limits(self, event: Event, _: float) -> None:
        for limit in events.rate_limits(event):
            if limit.name is not None and limit.remaining is not None:
                self.runtime.metrics.model_rate_limits[limit.name] = limit.remaining

    # -- the caller's side ------------------------------------------------------------------

    async def _on_speech_started(self, event: Event, _: float) -> None:
        self.turn_open = True
        if self.playback is not None:
            await self._barge_in()
        await self.on_speech("started")

    async def _on_speech_stopped(self, event: Event, _: float) -> None:
        await self.on_speech("stopped")

    async def _on_committed(self, event: Event, _: float) -> None:
        await self.on_speech("committed")

    async def _on_transcription(self, event: Event, _: float) -> None:
        if self.transcript is not None:
            self.transcript.caller(str(event.get("transcript", "")), event.get("item_id"))
        usage = transcription_usage(event)
        if usage is not None:
            self._add_usage(usage)

    async def _on_transcription_failed(self, event: Event, _: float) -> None:
        error = server_error({"error": event.get("error")})
        self.runtime.metrics.count("transcription_failures")
        log.warning(
            "transcription failed on %s: %s",
            self.state and self.state.conversation_id,
            error.code or error.message[:100],
        )
        if self.transcript is not None:
            self.transcript.unheard(event.get("item_id"))

    async def _on_item_done(self, event: Event, _: float) -> None:
        """A caller's audio item may carry its transcript in the item itself (taken once)."""
        item = event.get("item")
        if self.transcript is None or not isinstance(item, dict) or item.get("role") != "user":
            return
        content = item.get("content")
        parts = [p for p in content if isinstance(p, dict)] if isinstance(content, list) else []
        heard = [p["transcript"] for p in parts if p.get("type") == "input_audio"
                 and p.get("transcript")]  # fmt: skip
        if heard:
            self.transcript.caller(" ".join(str(t) for t in heard), item.get("id"))

    # -- the bot's side ----------------------------------------------------------------------

    async def _on_response_created(self, event: Event, _: float) -> None:
        self.response_active, self.response_requested, self.turn_open = True, False, False
        summary = response_summary(event)
        if self.state is not None:
            self.state.active_response_id = summary.id
            if summary.conversation_id:
                self.state.openai_conversation_id = summary.conversation_id

    async def _on_audio_delta(self, event: Event, received_s: float) -> None:
        if self.converter is None or self.closed:
            return
        try:
            audio = from_base64(str(event.get("delta", "")))
        except (binascii.Error, ValueError):
            self.runtime.metrics.count("errors")
            return
        item_id = str(event.get("item_id", ""))
        playback = self.playback
        if playback is None or playback.item_id != item_id:
            playback = self.playback = Playback(item_id, event.get("response_id"))
            await self.on_playback_started(playback)
        playback.sent_ms += len(audio) * 1000 / bytes_per_second(self.converter.model)
        await self.send_audio(self.converter.from_model(audio))
        self.runtime.metrics.relayed("to_caller", time.perf_counter() - received_s)
        self.runtime.metrics.count("frames_out")

    async def _on_audio_done(self, event: Event, _: float) -> None:
        playback, self.playback = self.playback, None
        if playback is not None:
            await self.on_playback_stopped(playback, interrupted=False)

    async def _on_bot_transcript(self, event: Event, _: float) -> None:
        if self.transcript is not None:
            self.transcript.bot(str(event.get("transcript", "")), event.get("item_id"))

    async def _on_bot_text(self, event: Event, _: float) -> None:
        """A text-only answer: kept in the transcript; the caller hears nothing of it."""
        if not self.text_only_noted:
            self.text_only_noted = True
            log.warning(
                "call %s: the model answered in text; there is no audio to play",
                self.state and self.state.conversation_id,
            )
        self.runtime.metrics.count("text_responses")
        if self.transcript is not None:
            self.transcript.bot(str(event.get("text", "")), event.get("item_id"))

    async def _on_response_done(self, event: Event, _: float) -> None:
        self.response_active = self.response_requested = False
        summary = response_summary(event)
        if self.state is not None:
            self.state.active_response_id = None
        if summary.usage is not None:
            self._add_usage(summary.usage.as_usage())
        if summary.status == "cancelled" and self.playback is not None:
            playback, self.playback = self.playback, None
            await self.on_playback_stopped(playback, interrupted=True)
        elif summary.status == "failed":
            self.runtime.metrics.count("responses_failed")
            log.warning(
                "response %s failed on %s: %s",
                summary.id,
                self.state and self.state.conversation_id,
                summary.status_details,
            )
        if self.response_wanted and not self.closed:
            self.response_wanted = False
            await self.request_response()

    # -- function calls ----------------------------------------------------------------------

    async def _on_function_call(self, event: Event, _: float) -> None:
        call_id = str(event.get("call_id") or "")
        if self.state is None or not call_id or call_id in self.calls_answered:
            return
        self.calls_answered.add(call_id)
        name, arguments = str(event.get("name", "")), event.get("arguments") or ""
        result = await self.runtime.registry.call(call_id, name, arguments)
        await self._record_function_result(result)

    async def _on_output_item_done(self, event: Event, received_s: float) -> None:
        """A function call item that is done: answered unless its arguments event was."""
        item = event.get("item")
        if isinstance(item, dict) and item.get("type") == "function_call":
            await self._on_function_call(item, received_s)

    async def _record_function_result(self, result: FunctionResult) -> None:
        assert self.state is not None
        self.state.add_function_call(result.record())
        self.runtime.persister.save(self.state)
        self.runtime.metrics.count("function_calls")
        output = {"call_id": result.call_id, "output": json.dumps(result.result, default=str)}
        await self.model_client().send(
            {"type": "conversation.item.create", "item": {"type": "function_call_output", **output}}
        )
        await self.request_response()
        if result.action is not None:
            await self.on_action(result.action)

    # -- helpers ------------------------------------------------------------------------------

    def _add_usage(self, usage: ModelUsage) -> None:
        for name, amount in usage.counters().items():
            self.runtime.metrics.count(f"model_{name}", amount)
        if self.state is not None:
            self.state.usage = self.state.usage.plus(usage)
            self.runtime.persister.save(self.state)

    async def _barge_in(self) -> None:
        playback, self.playback = self.playback, None
        if playback is None:
            return
        self.runtime.metrics.count("barge_ins")
        await self.on_playback_stopped(playback, interrupted=True)
        model = self.model_client()
        if self.vad.turn_detection is None and self.response_active:
            await model.send({"type": "response.cancel"})  # server VAD cancels by itself
        truncate = {
            "type": "conversation.item.truncate",
            "item_id": playback.item_id,
            "content_index": 0,
            "audio_end_ms": int(playback.sent_ms),
        }
        await model.send(truncate)


Handler = Callable[[ModelTurns, Event, float], Awaitable[None]]
_HANDLERS: dict[str, Handler] = {
    events.SESSION_CREATED: ModelTurns._on_session_created,
    events.ERROR: ModelTurns._on_error,
    events.RATE_LIMITS_UPDATED: ModelTurns._on_rate_limits,
    events.SPEECH_STARTED: ModelTurns._on_speech_started,
    events.SPEECH_STOPPED: ModelTurns._on_speech_stopped,
    events.COMMITTED: ModelTurns._on_committed,
    events.TRANSCRIPTION_COMPLETED: ModelTurns._on_transcription,
    events.TRANSCRIPTION_FAILED: ModelTurns._on_transcription_failed,
    events.ITEM_DONE: ModelTurns._on_item_done,
    events.RESPONSE_CREATED: ModelTurns._on_response_created,
    events.AUDIO_DELTA: ModelTurns._on_audio_delta,
    events.AUDIO_DONE: ModelTurns._on_audio_done,
    events.AUDIO_TRANSCRIPT_DONE: ModelTurns._on_bot_transcript,
    events.TEXT_DONE: ModelTurns._on_bot_text,
    events.FUNCTION_ARGUMENTS_DONE: ModelTurns._on_function_call,
    events.OUTPUT_ITEM_DONE: ModelTurns._on_output_item_done,
    events.RESPONSE_DONE: ModelTurns._on_response_done,
    events.CLIENT_RECONNECTED: ModelTurns._on_reconnected,
    events.CLIENT_ROLLED_OVER: ModelTurns._on_rolled_over,
    events.CLIENT_FAILED: ModelTurns._on_failed,
}
# GA events the bridge knows and has nothing to do for (not logged; any other type is).
IGNORED = frozenset(
    {
        events.SESSION_UPDATED,
        events.ITEM_ADDED,
        events.TRANSCRIPTION_DELTA,
        events.AUDIO_TRANSCRIPT_DELTA,
        events.TEXT_DELTA,
        "response.output_item.added",
        "response.content_part.added",
        "response.content_part.done",
        "response.function_call_arguments.delta",
        "conversation.item.truncated",
        "input_audio_buffer.cleared",
        "conversation.item.created",
    }
)
# Events whose handlers only update the call and talk to the caller, never waiting on the
# model: the realtime client's reader may run them itself. So the first bot audio of a
# response, which follows `response.created` and the item and part events in one burst, makes
# no hop through the dispatcher's queue either. (Barge-in, function calls and `response.done`,
# which may send to the model, go through the queue.)
CALLER_ONLY_EVENTS = IGNORED | {
    events.AUDIO_DELTA,
    events.AUDIO_DONE,
    events.AUDIO_TRANSCRIPT_DONE,
    events.TEXT_DONE,
    events.RESPONSE_CREATED,
    events.RATE_LIMITS_UPDATED,
    events.SPEECH_STOPPED,
    events.COMMITTED,
    events.TRANSCRIPTION_COMPLETED,
    events.TRANSCRIPTION_FAILED,
    events.ITEM_DONE,
}
