"""Twilio Media Streams (bidirectional `<Connect><Stream>`) over the base bridge.

Twilio has no error message: bad input is logged and counted as `protocol_errors`; before the
session exists every error closes the socket (1008), afterwards only a flood of them does.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from pydantic import BaseModel, ConfigDict, Field, field_validator
from starlette.websockets import WebSocket, WebSocketDisconnect
from twilio.request_validator import RequestValidator

from bridges.audio import MULAW_SILENCE, MediaFormat, media_format_from_twilio
from bridges.call.base import DTMF_DIGITS, BaseBridge, Playback, ResumeRefused
from bridges.call.runtime import BridgeRuntime
from bridges.errors import InstanceFull, ModelRefused, ProtocolError, UnsupportedMediaFormat
from bridges.telephony.peer import (
    CLOSE_ERROR,
    CLOSE_NORMAL,
    CLOSE_POLICY,
    Incoming,
    Peer,
    decode_audio,
    encode_audio,
    validate,
)
from sessions.errors import InvalidConversationId, RetryableError, SessionLimitReached
from sessions.keys import check_conversation_id
from sessions.settings import Settings
from sessions.state import RESUMABLE, SessionStatus

log = logging.getLogger(__name__)

MEDIA_FORMAT: MediaFormat = "raw/mulaw"
CLOSE_TRY_AGAIN = 1013  # "try again later": this instance is full
FRAME_BYTES = 160  # 20 ms of µ-law at 8 kHz
MAX_PROTOCOL_ERRORS = 20
DETACHED = "stream detached; the call can resume"
REPLACED = "replaced by a newer stream for this call"
STOPPED = "stream stopped; the call can resume on a new stream"


class StreamRefused(ProtocolError):
    """The stream cannot be served (ended call, store down): closed with `code`, not counted."""

    def __init__(self, reason: str, code: int = CLOSE_POLICY) -> None:
        super().__init__(reason)
        self.code = code


class _Strict(BaseModel):
    model_config = ConfigDict(strict=True, extra="allow")


class Event(_Strict):
    """Fields every Twilio event after `connected` carries."""

    event: str
    streamSid: str = Field(min_length=1, max_length=64)  # noqa: N815 - the protocol's name


class Connected(_Strict):
    event: str
    protocol: str | None = Field(default=None, max_length=32)
    version: str | None = Field(default=None, max_length=32)


class StreamFormat(_Strict):
    encoding: str = Field(max_length=64)
    sampleRate: int  # noqa: N815
    channels: int


class StartInfo(_Strict):
    streamSid: str = Field(pattern=r"^[A-Za-z0-9_-]{1,64}$")  # noqa: N815 - MZ + 32 hex
    callSid: str  # noqa: N815
    accountSid: str | None = Field(default=None, max_length=64)  # noqa: N815
    tracks: list[str] = Field(default_factory=list, max_length=4)
    customParameters: dict[str, str] = Field(default_factory=dict, max_length=50)  # noqa: N815
    mediaFormat: StreamFormat  # noqa: N815

    @field_validator("callSid")
    @classmethod
    def _safe_id(cls, value: str) -> str:
        return check_conversation_id(value)

    @field_validator("customParameters")
    @classmethod
    def _short_values(cls, value: dict[str, str]) -> dict[str, str]:
        if any(len(k) > 100 or len(v) > 500 for k, v in value.items()):
            raise ValueError("names must be at most 100 and values 500 characters")
        return value


class Start(Event):
    start: StartInfo


class MediaInfo(_Strict):
    track: str = Field(default="inbound", max_length=32)
    payload: str


class Media(Event):
    media: MediaInfo


class DtmfInfo(_Strict):
    digit: str = Field(max_length=1)


class Dtmf(Event):
    dtmf: DtmfInfo


class MarkInfo(_Strict):
    name: str = Field(max_length=256)


class Mark(Event):
    mark: MarkInfo


class StopInfo(_Strict):
    callSid: str | None = Field(default=None, max_length=128)  # noqa: N815


class Stop(Event):
    stop: StopInfo | None = None


def signature_valid(websocket: WebSocket, settings: Settings) -> bool:
    """X-Twilio-Signature checks out (no TWILIO_AUTH_TOKEN: no check)."""
    token = settings.twilio_auth_token
    if token is None or not token.get_secret_value():
        return True
    signature = websocket.headers.get("x-twilio-signature")
    if not signature:
        return False
    validator = RequestValidator(token.get_secret_value())
    return any(validator.validate(url, {}, signature) for url in signed_urls(str(websocket.url)))


def signed_urls(received: str, secure_scheme: str = "wss") -> list[str]:
    """The URLs Twilio may have signed: the secure form (TLS ends at a proxy) and as received."""
    secure = urlunsplit(urlsplit(received)._replace(scheme=secure_scheme))
    return [secure] if secure == received else [secure, received]


def close_reason(text: str) -> str:
    """`text` cut to fit a close frame (at most 120 bytes of UTF-8)."""
    return text.encode()[:120].decode(errors="ignore")


class TwilioBridge(BaseBridge):
    """One Twilio media stream; the call's conversation id is its `callSid`.

    A `start` whose callSid has a live, resumable stored session (or a bridge still serving
    it in this process) resumes that session: history is replayed into a new model session
    and there is no greeting. A second stream for a call that is still live takes the call
    over: the older stream is detached and its socket closed (1000, "replaced by a newer
    stream"), since Twilio plays the bot's audio only on the newest stream of a call.
    """

    bridge_type = "twilio"

    def __init__(self, runtime: BridgeRuntime, peer: Peer) -> None:
        super().__init__(runtime)
        self.peer = peer
        self.stream_sid: str | None = None
        self.protocol_version: str | None = None
        self.started = False
        self.closing: tuple[int, str] | None = None
        self.errors = 0
        self.outgoing = bytearray()
        self.marks: dict[str, str] = {}
        self.mark_count = 0
        self.heard_mark: str | None = None
        self.cleared = True
        self.call_sid: str | None = None  # known from `start` on, before the session exists

    @property
    def outstanding_marks(self) -> int:
        """Marks sent whose audio Twilio has not reported played yet."""
        return len(self.marks)

    async def run(self) -> None:
        """Serve the stream until Twilio stops it, drops it, or it has to be closed."""
        try:
            async for incoming in self.peer.messages():
                await self._handle(incoming)
                if self.closing is not None or self.closed:
                    break
        finally:
            if not self.closed:
                await self.detach()
            await self._close()

    async def detach(self) -> None:
        """Keep the session PAUSED for a resume and close this stream's socket."""
        await super().detach()
        await self._close()

    async def end_call(self, reason: str) -> None:
        """End the session and close the socket (1011 when the call failed)."""
        failed = self.state is not None and self.state.status is SessionStatus.ERROR
        self.closing = self.closing or (CLOSE_ERROR if failed else CLOSE_NORMAL, reason)
        await super().end_call(reason)
        await self._close()

    # -- events from Twilio -----------------------------------------------------------------

    async def _handle(self, incoming: Incoming) -> None:
        try:
            await self._dispatch(incoming)
        except (StreamRefused, ResumeRefused) as exc:
            self._refuse(getattr(exc, "code", CLOSE_POLICY), str(exc))
        except ModelRefused as exc:
            self._refuse(CLOSE_ERROR, f"model refused the session: check {exc.setting}")
        except InstanceFull as exc:
            self._refuse(CLOSE_TRY_AGAIN, str(exc))
        except (RetryableError, SessionLimitReached) as exc:
            self._refuse(CLOSE_ERROR, str(exc))
        except (ProtocolError, InvalidConversationId) as exc:
            self._protocol_error(str(exc))
        except Exception:
            log.exception("twilio stream %s failed", self.stream_sid)
            self._refuse(CLOSE_ERROR, "internal error")

    async def _dispatch(self, incoming: Incoming) -> None:
        data = incoming.data
        if data is None:
            raise ProtocolError(incoming.error or "bad message")
        event = data.get("event")
        handler = _HANDLERS.get(event) if isinstance(event, str) else None
        if handler is None:
            raise ProtocolError(f"unknown event {str(event)[:60]!r}")
        if not self.started and event not in _BEFORE_START:
            raise ProtocolError(f"{event} before start")
        if self.started and event != "connected" and data.get("streamSid") != self.stream_sid:
            raise ProtocolError(f"streamSid {str(data.get('streamSid'))[:64]!r} is not this stream")
        await handler(self, data, incoming.received_s)

    async def _connected(self, data: dict[str, Any], _: float) -> None:
        self.protocol_version = validate(Connected, data).version

    async def _start(self, data: dict[str, Any], _: float) -> None:
        if self.started:
            raise ProtocolError("start already received on this stream")
        info = validate(Start, data).start
        if info.streamSid != data["streamSid"]:
            raise ProtocolError("start.streamSid does not match streamSid")
        self.call_sid = info.callSid
        fmt = info.mediaFormat
        media_format_from_twilio(fmt.encoding, fmt.sampleRate)
        if fmt.channels != 1:
            raise UnsupportedMediaFormat(f"unsupported Twilio media: {fmt.channels} channels")
        self.stream_sid = info.streamSid
        await self._begin(info)
        self.started = True

    async def _begin(self, info: StartInfo) -> None:
        cid, custom = info.callSid, info.customParameters
        self.runtime.handover.cancel_end(cid)  # a stopped stream's call, back within its grace
        stream = {"stream_sid": info.streamSid, "account_sid": info.accountSid,
                  "tracks": info.tracks, "protocol_version": self.protocol_version}  # fmt: skip
        metadata = {"custom_parameters": dict(custom), "twilio": stream}
        if self._take_over(cid) or await self._stored_resumable(cid):
            state = await self.handle_session_resume(cid, MEDIA_FORMAT)
            state.metadata = {**state.metadata, **metadata}
            self.runtime.persister.save(state)
            return
        await self.start_session(
            cid, MEDIA_FORMAT, greet=True, metadata=metadata,
            caller=custom.get("caller") or "unknown", bot_name=custom.get("botName") or "voice-bot",
        )  # fmt: skip

    def _take_over(self, call_sid: str) -> bool:
        """True when a bridge in this process still serves the call (it is detached next)."""
        live = self.runtime.calls.get(call_sid)
        if isinstance(live, TwilioBridge) and live is not self and not live.closed:
            live.closing = (CLOSE_NORMAL, REPLACED)
            log.info("call %s: a new stream takes over from %s", call_sid, live.stream_sid)
            return True
        return live is not None and not live.closed

    async def _stored_resumable(self, call_sid: str) -> bool:
        try:
            stored = await self.runtime.storage.load(call_sid)
        except RetryableError as exc:
            raise StreamRefused(f"session store unavailable: {exc}", CLOSE_ERROR) from None
        if stored is None:
            return False
        if stored.status is SessionStatus.ENDED:
            raise StreamRefused("call has ended")
        if stored.status not in RESUMABLE:
            raise StreamRefused(f"session is in status {stored.status.value}")
        return True

    async def _media(self, data: dict[str, Any], received_s: float) -> None:
        media = data.get("media")
        payload = media.get("payload") if isinstance(media, dict) else None
        track = media.get("track", "inbound") if isinstance(media, dict) else None
        if not isinstance(payload, str) or not isinstance(track, str):
            checked = validate(Media, data).media  # the model's message names what is wrong
            payload, track = checked.payload, checked.track
        if track == "inbound":
            await self.caller_audio(decode_audio(payload), received_s)

    async def _dtmf(self, data: dict[str, Any], _: float) -> None:
        digit = validate(Dtmf, data).dtmf.digit
        if digit not in DTMF_DIGITS:
            raise ProtocolError(f"dtmf digit {digit!r} is not one of 0-9 * # A-D")
        await self.caller_event(f"DTMF {digit}")

    async def _mark(self, data: dict[str, Any], _: float) -> None:
        name = validate(Mark, data).mark.name
        if name not in self.marks:
            raise ProtocolError(f"mark {name!r} was not sent on this stream")
        for sent in list(self.marks):
            del self.marks[sent]
            if sent == name:
                break
        self.heard_mark = name

    async def _stop(self, data: dict[str, Any], _: float) -> None:
        """This stream ended; the call may go on on a new stream: PAUSED for a grace window.

        A new stream for the callSid within TWILIO_STOP_GRACE_S resumes the call; a status
        callback with a final CallStatus ends it at once; else it ends when the grace is over.
        """
        stop = validate(Stop, data).stop
        if stop is not None and stop.callSid not in (None, self.conversation_id):
            raise ProtocolError("stop.callSid is not this stream's call")
        grace_s = self.runtime.settings.twilio_stop_grace_s
        state = self.state
        if not grace_s or state is None:
            await self.end_call("call ended")
            return
        self.closing = (CLOSE_NORMAL, STOPPED)
        await self.detach()
        self.runtime.handover.end_after(state.conversation_id, state.epoch, grace_s, "call ended")

    # -- hooks to Twilio ----------------------------------------------------------------------

    async def send_audio(self, chunk: bytes) -> None:
        self.outgoing += chunk
        while len(self.outgoing) >= FRAME_BYTES:
            frame = bytes(self.outgoing[:FRAME_BYTES])
            del self.outgoing[:FRAME_BYTES]
            await self._send_frame(frame)

    async def on_playback_stopped(self, playback: Playback, interrupted: bool) -> None:
        if interrupted:
            self.outgoing.clear()
            await self._clear()
            return
        if self.outgoing:
            await self._send_frame(bytes(self.outgoing).ljust(FRAME_BYTES, MULAW_SILENCE))
            self.outgoing.clear()
        self.mark_count += 1
        name = f"bot-{self.mark_count}"
        self.marks[name] = playback.item_id
        await self._send("mark", mark={"name": name})

    async def on_speech(self, kind: str) -> None:
        if kind == "started" and self.marks:
            await self._clear()  # Twilio is still playing audio queued before a mark

    async def on_hang_up(self, reason: str, failed: bool) -> None:
        self.closing = self.closing or (CLOSE_ERROR if failed else CLOSE_NORMAL, reason)
        await self._close()

    async def on_action(self, action: dict[str, Any]) -> None:
        log.warning("call %s: %s needs Twilio's REST API; a media stream cannot carry it",
                    self.conversation_id, action.get("type"))  # fmt: skip

    # -- helpers ------------------------------------------------------------------------------

    async def _send_frame(self, frame: bytes) -> None:
        self.cleared = False  # stream sids are checked at `start`: no JSON escaping needed
        await self.peer.send_text(f'{{"event":"media","streamSid":"{self.stream_sid}",'
                                  f'"media":{{"payload":"{encode_audio(frame)}"}}}}')  # fmt: skip

    async def _clear(self) -> None:
        if not self.cleared:
            self.cleared = True
            await self._send("clear")

    async def _send(self, event: str, **fields: Any) -> None:
        if self.stream_sid is not None:
            await self.peer.send({"event": event, "streamSid": self.stream_sid, **fields})

    async def _close(self) -> None:
        code, reason = self.closing or (CLOSE_NORMAL, DETACHED)
        with contextlib.suppress(WebSocketDisconnect):
            await self.peer.close(code, reason)

    def _refuse(self, code: int, reason: str) -> None:
        log.warning("twilio stream %s (call %s) closed: %s", self.stream_sid,
                    self.conversation_id or self.call_sid, reason)  # fmt: skip
        self.closing = self.closing or (code, close_reason(reason))

    def _protocol_error(self, reason: str) -> None:
        self.runtime.metrics.count("protocol_errors")
        self.errors += 1
        log.warning("twilio stream %s (call %s): %s", self.stream_sid,
                    self.conversation_id or self.call_sid, reason)  # fmt: skip
        if not self.started:
            self.closing = self.closing or (CLOSE_POLICY, close_reason(reason))
        elif self.errors >= MAX_PROTOCOL_ERRORS:
            self.closing = self.closing or (CLOSE_POLICY, "too many protocol errors")


Handler = Callable[[TwilioBridge, dict[str, Any], float], Awaitable[None]]
_HANDLERS: dict[str, Handler] = {
    "connected": TwilioBridge._connected,
    "start": TwilioBridge._start,
    "media": TwilioBridge._media,
    "dtmf": TwilioBridge._dtmf,
    "mark": TwilioBridge._mark,
    "stop": TwilioBridge._stop,
}
_BEFORE_START = frozenset({"connected", "start"})
