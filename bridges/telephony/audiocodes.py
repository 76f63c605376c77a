"""AudioCodes VoiceAI Connect Bot API (streaming mode) over the base bridge."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from bridges.audio import MediaFormat, negotiate
from bridges.call.base import DTMF_DIGITS, BaseBridge, Playback, ResumeRefused
from bridges.call.runtime import BridgeRuntime
from bridges.errors import (
    InstanceFull,
    ModelRefused,
    ModelUnavailable,
    ProtocolError,
    UnsupportedMediaFormat,
)
from bridges.telephony.peer import (
    CLOSE_NORMAL,
    Incoming,
    Peer,
    decode_audio,
    encode_audio,
    validate,
)
from sessions.errors import InvalidConversationId, SessionLimitReached
from sessions.keys import check_conversation_id

log = logging.getLogger(__name__)


class Message(BaseModel):
    """Fields every VAIC message carries."""

    model_config = ConfigDict(extra="allow")

    type: str
    conversationId: str  # noqa: N815 - the protocol's name

    @field_validator("conversationId")
    @classmethod
    def _safe_id(cls, value: str) -> str:
        return check_conversation_id(value)


class SessionInitiate(Message):
    botName: str = Field(default="voice-bot", max_length=200)  # noqa: N815
    caller: str = Field(default="unknown", max_length=200)
    expectAudioMessages: bool = True  # noqa: N815
    supportedMediaFormats: list[str] = Field(default_factory=list, max_length=20)  # noqa: N815


class SessionResume(Message):
    supportedMediaFormats: list[str] = Field(default_factory=list, max_length=20)  # noqa: N815


class SessionEnd(Message):
    reasonCode: str | None = Field(default=None, max_length=200)  # noqa: N815
    reason: str | None = Field(default=None, max_length=500)


class UserStreamChunk(Message):
    audioChunk: str  # noqa: N815


class Activity(BaseModel):
    model_config = ConfigDict(extra="allow")

    type: Literal["event"]
    name: str = Field(max_length=100)
    value: str | None = Field(default=None, max_length=1000)


class Activities(Message):
    activities: list[Any] = Field(max_length=100)  # each entry validated on its own


class AudioCodesBridge(BaseBridge):
    """One VAIC conversation on one WebSocket."""

    bridge_type = "audiocodes"

    def __init__(self, runtime: BridgeRuntime, peer: Peer) -> None:
        super().__init__(runtime)
        self.peer = peer
        self.media_format: MediaFormat = "raw/lpcm16"
        self.stream_count = 0
        self.stream_id: str | None = None
        self.hangup = False
        self.close_reason = "call ended"

    async def run(self) -> None:
        """Serve messages until the peer leaves or the call ends."""
        try:
            async for incoming in self.peer.messages():
                await self._handle(incoming)
                if self.hangup:
                    await self.peer.close(CLOSE_NORMAL, self.close_reason)
                    return
        finally:
            if not self.closed:
                await self.detach()

    async def _handle(self, incoming: Incoming) -> None:
        if incoming.data is None:
            await self._error(incoming.error or "bad message")
            return
        kind = incoming.data.get("type")
        if not isinstance(kind, str):
            await self._error("a message needs a string 'type'")
            return
        handler = _HANDLERS.get(kind)
        if handler is None:  # the Bot API adds message types over time: not an error
            self.runtime.metrics.count("ignored_messages")
            log.info("call %s: ignoring AudioCodes message type %.60r", self.conversation_id, kind)
            return
        try:
            if self.state is None and kind not in _BEFORE_SESSION:
                raise ProtocolError(f"{kind} before session.initiate or session.resume")
            await handler(self, incoming)
        except ResumeRefused as exc:
            await self._error(str(exc), incoming.data.get("conversationId"))
            self.hangup, self.close_reason = True, f"resume refused: {exc}"
        except (UnsupportedMediaFormat, ModelUnavailable, ModelRefused, SessionLimitReached,
                InstanceFull) as exc:  # fmt: skip
            await self._error(str(exc), incoming.data.get("conversationId"))
            self.hangup = self.state is None
        except (ProtocolError, InvalidConversationId) as exc:
            self.runtime.metrics.count("protocol_errors")
            await self._error(str(exc))

    # -- messages from VAIC ---------------------------------------------------------------

    async def _initiate(self, incoming: Incoming) -> None:
        msg = validate(SessionInitiate, self._data(incoming))
        if self.state is not None:
            raise ProtocolError("session already started on this connection")
        self.media_format = negotiate(msg.supportedMediaFormats)
        await self.start_session(
            msg.conversationId, self.media_format, caller=msg.caller, bot_name=msg.botName,
            metadata={"expect_audio_messages": msg.expectAudioMessages},
        )  # fmt: skip
        await self._send("session.accepted", mediaFormat=self.media_format)

    async def _resume(self, incoming: Incoming) -> None:
        msg = validate(SessionResume, self._data(incoming))
        if self.state is not None:
            raise ProtocolError("session already started on this connection")
        offered = negotiate(msg.supportedMediaFormats) if msg.supportedMediaFormats else None
        state = await self.handle_session_resume(msg.conversationId, offered)
        self.media_format = state.media_format  # type: ignore[assignment]
        await self._send("session.accepted", mediaFormat=self.media_format)
        if self.runtime.settings.send_session_resumed:
            await self._send("session.resumed", sessionId=state.session_id)

    async def _end(self, incoming: Incoming) -> None:
        msg = validate(SessionEnd, self._mine(incoming))
        reason = msg.reason or msg.reasonCode or "session.end"
        await self.end_call(reason)
        self.hangup = True

    async def _stream_start(self, incoming: Incoming) -> None:
        validate(Message, self._mine(incoming))
        await self._send("userStream.started")

    async def _stream_stop(self, incoming: Incoming) -> None:
        validate(Message, self._mine(incoming))
        await self._send("userStream.stopped")

    async def _chunk(self, incoming: Incoming) -> None:
        data = self._mine(incoming)
        chunk = data.get("audioChunk")
        if not isinstance(chunk, str):  # the model's message names what is wrong
            chunk = validate(UserStreamChunk, data).audioChunk
        await self.caller_audio(decode_audio(chunk), incoming.received_s)

    async def _activities(self, incoming: Incoming) -> None:
        """Each valid entry is acted on in order; the bad ones are reported together after."""
        msg = validate(Activities, self._mine(incoming))
        bad: list[str] = []
        for index, entry in enumerate(msg.activities):
            try:
                activity = validate(Activity, entry if isinstance(entry, dict) else {})
                if activity.name == "dtmf" and activity.value not in DTMF_DIGITS:
                    raise ProtocolError(f"dtmf value {activity.value!r} is not one of 0-9 * # A-D")
            except ProtocolError as exc:
                bad.append(f"activities[{index}]: {exc}")
                continue
            if activity.name == "dtmf":
                await self.caller_event(f"DTMF {activity.value}")
            elif activity.name == "hangup":
                await self.end_call("caller hung up")
                self.hangup = True
                break
        if bad:
            self.runtime.metrics.count("protocol_errors")
            await self._error("; ".join(bad)[:500])

    async def _validate_connection(self, incoming: Incoming) -> None:
        msg = validate(Message, self._data(incoming))
        await self.peer.send({"type": "connection.validated", "conversationId": msg.conversationId,
                              "success": True})  # fmt: skip

    # -- hooks to VAIC ------------------------------------------------------------------------

    async def send_audio(self, chunk: bytes) -> None:
        if self.stream_id is not None:  # ids are of safe characters: no JSON escaping needed
            await self.peer.send_text(
                f'{{"type":"playStream.chunk","conversationId":"{self.conversation_id}",'
                f'"streamId":"{self.stream_id}","audioChunk":"{encode_audio(chunk)}"}}'
            )

    async def on_playback_started(self, playback: Playback) -> None:
        self.stream_count += 1
        self.stream_id = str(self.stream_count)
        await self._send("playStream.start", streamId=self.stream_id, mediaFormat=self.media_format)

    async def on_playback_stopped(self, playback: Playback, interrupted: bool) -> None:
        if self.stream_id is not None:
            await self._send("playStream.stop", streamId=self.stream_id)
            self.stream_id = None

    async def on_speech(self, kind: str) -> None:
        await self._send(f"userStream.speech.{kind}")

    async def on_action(self, action: dict[str, Any]) -> None:
        if action.get("type") == "transfer":
            params = {"transferTarget": action.get("destination")}
            activity = {"type": "event", "name": "transfer", "activityParams": params}
            await self._send("activities", activities=[activity])

    async def on_hang_up(self, reason: str, failed: bool) -> None:
        activity = {"type": "event", "name": "hangup", "activityParams": {"hangupReason": reason}}
        await self._send("activities", activities=[activity])
        self.hangup = True
        await self.peer.close(CLOSE_NORMAL, reason)

    # -- helpers ------------------------------------------------------------------------------

    async def _send(self, kind: str, **fields: Any) -> None:
        await self.peer.send({"type": kind, "conversationId": self.conversation_id, **fields})

    async def _error(self, reason: str, conversation_id: Any = None) -> None:
        cid = self.conversation_id or (
            conversation_id if isinstance(conversation_id, str) else None
        )
        if cid is not None:
            try:
                check_conversation_id(cid)
            except InvalidConversationId:
                cid = None
        await self.peer.send({"type": "session.error", "conversationId": cid, "reason": reason})

    def _data(self, incoming: Incoming) -> dict[str, Any]:
        assert incoming.data is not None
        return incoming.data

    def _mine(self, incoming: Incoming) -> dict[str, Any]:
        data = self._data(incoming)
        if data.get("conversationId") != self.conversation_id:
            raise ProtocolError("conversationId does not match this connection's conversation")
        return data


Handler = Callable[[AudioCodesBridge, Incoming], Awaitable[None]]
_HANDLERS: dict[str, Handler] = {
    "session.initiate": AudioCodesBridge._initiate,
    "session.resume": AudioCodesBridge._resume,
    "session.end": AudioCodesBridge._end,
    "userStream.start": AudioCodesBridge._stream_start,
    "userStream.stop": AudioCodesBridge._stream_stop,
    "userStream.chunk": AudioCodesBridge._chunk,
    "activities": AudioCodesBridge._activities,
    "connection.validate": AudioCodesBridge._validate_connection,
}
_BEFORE_SESSION = frozenset({"session.initiate", "session.resume", "connection.validate"})
