"""Telephony-side clients speaking the exact protocol shapes, for the demo, tests and benchmarks.

`AudioCodesClient` plays the VoiceAI Connect side of the Bot API; `TwilioClient` plays
Twilio Media Streams. Both keep every message they send and receive, in order, and let a
caller await a message without polling.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from typing import Any

from twilio.request_validator import RequestValidator
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from bridges.audio import MediaFormat
from bridges.sim.speech import speech_frames

Message = dict[str, Any]
Observer = Callable[[str, Message], None]


class ProtocolClient:
    """A WebSocket peer that logs traffic and lets callers await messages."""

    def __init__(self, url: str, headers: dict[str, str] | None = None,
                 observer: Observer | None = None) -> None:  # fmt: skip
        self.url = url
        self.headers = headers or {}
        self.observer = observer
        self.received: list[Message] = []
        self.sent: list[Message] = []
        self.close_code: int | None = None
        self.close_reason: str | None = None
        self._ws: ClientConnection | None = None
        self._changed = asyncio.Condition()
        self._reader: asyncio.Task[None] | None = None
        self._cursor = 0

    async def connect(self) -> None:
        """Open the WebSocket (raises websockets' InvalidStatus when the upgrade is refused)."""
        self._ws = await connect(self.url, additional_headers=self.headers, max_size=None)
        self._reader = asyncio.create_task(self._read())

    async def close(self) -> None:
        """Close the socket (a drop, as far as the bridge can tell, unless the call ended)."""
        if self._ws is not None:
            await self._ws.close()
        if self._reader is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await self._reader

    async def send_raw(self, text: str) -> None:
        """Send a text frame as is (for malformed-input tests)."""
        assert self._ws is not None, "connect() first"
        await self._ws.send(text)

    async def send_json(self, message: Message) -> None:
        """Send one message and log it."""
        self.sent.append(message)
        if self.observer is not None:
            self.observer("->", message)
        await self.send_raw(json.dumps(message))

    async def expect(self, predicate: Callable[[Message], bool] | str,
                     timeout_s: float = 10.0) -> Message:  # fmt: skip
        """The next not-yet-consumed received message matching (a type name or a predicate)."""
        match = (lambda m: _kind(m) == predicate) if isinstance(predicate, str) else predicate
        async with asyncio.timeout(timeout_s), self._changed:
            while True:
                for index in range(self._cursor, len(self.received)):
                    if match(self.received[index]):
                        self._cursor = index + 1
                        return self.received[index]
                if self.close_code is not None:
                    raise ConnectionError(f"closed ({self.close_code} {self.close_reason}) "
                                          f"before {predicate!r}")  # fmt: skip
                await self._changed.wait()

    async def closed(self, timeout_s: float = 10.0) -> int:
        """Wait until the bridge closes the socket; its close code."""
        async with asyncio.timeout(timeout_s), self._changed:
            await self._changed.wait_for(lambda: self.close_code is not None)
        assert self.close_code is not None
        return self.close_code

    def of_type(self, kind: str) -> list[Message]:
        """Every received message of a type."""
        return [m for m in self.received if _kind(m) == kind]

    async def _read(self) -> None:
        assert self._ws is not None
        try:
            async for raw in self._ws:
                message = json.loads(raw)
                async with self._changed:
                    self.received.append(message)
                    self._changed.notify_all()
                if self.observer is not None:
                    self.observer("<-", message)
        except ConnectionClosed:
            pass
        finally:
            async with self._changed:
                self.close_code = self._ws.close_code or 1006
                self.close_reason = self._ws.close_reason
                self._changed.notify_all()


def _kind(message: Message) -> str | None:
    return message.get("type") or message.get("event")


class AudioCodesClient(ProtocolClient):
    """The VoiceAI Connect side of one conversation."""

    def __init__(self, base_url: str, conversation_id: str, token: str | None = None,
                 observer: Observer | None = None) -> None:  # fmt: skip
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        super().__init__(f"{base_url}/ws/audiocodes", headers, observer)
        self.conversation_id = conversation_id

    async def send(self, kind: str, **fields: Any) -> None:
        """Send a message of `kind` for this conversation."""
        await self.send_json({"type": kind, "conversationId": self.conversation_id, **fields})

    async def initiate(self, formats: list[str] | None = None, caller: str = "+15550100",
                       bot_name: str = "demo-bot") -> Message:  # fmt: skip
        """`session.initiate`; returns `session.accepted` (or `session.error`)."""
        await self.send("session.initiate", botName=bot_name, caller=caller,
                        expectAudioMessages=True,
                        supportedMediaFormats=formats or ["raw/lpcm16"])  # fmt: skip
        return await self.expect(lambda m: m.get("type") in ("session.accepted", "session.error"))

    async def resume(self) -> Message:
        """`session.resume`; returns `session.accepted` (or `session.error`)."""
        await self.send("session.resume")
        return await self.expect(lambda m: m.get("type") in ("session.accepted", "session.error"))

    async def say(self, digits: str, fmt: MediaFormat = "raw/lpcm16", pace_s: float = 0.0) -> None:
        """Speak an utterance (digits as deterministic speech) on the user stream."""
        await self.send("userStream.start")
        await self.expect("userStream.started")
        for frame in speech_frames(digits, fmt):
            await self.send("userStream.chunk", audioChunk=base64.b64encode(frame).decode())
            if pace_s:
                await asyncio.sleep(pace_s)
        await self.send("userStream.stop")

    async def dtmf(self, digit: str) -> None:
        """A DTMF digit as an activity."""
        await self.send(
            "activities", activities=[{"type": "event", "name": "dtmf", "value": digit}]
        )

    async def hangup(self) -> None:
        """The caller hangs up (an activity)."""
        await self.send("activities", activities=[{"type": "event", "name": "hangup"}])

    async def end(self, reason: str = "caller ended the call") -> None:
        """`session.end`."""
        await self.send("session.end", reasonCode="client-disconnected", reason=reason)


class TwilioClient(ProtocolClient):
    """The Twilio side of one media stream."""

    def __init__(self, base_url: str, call_sid: str, stream_sid: str,
                 headers: dict[str, str] | None = None, observer: Observer | None = None,
                 path: str = "/ws/twilio") -> None:  # fmt: skip
        super().__init__(f"{base_url}{path}", headers, observer)
        self.call_sid = call_sid
        self.stream_sid = stream_sid
        self.sequence = 0
        self.chunk = 0
        self.started_s = time.monotonic()
        self.echoed_marks = 0

    def _next(self) -> str:
        self.sequence += 1
        return str(self.sequence)

    async def start(self, custom: dict[str, str] | None = None) -> None:
        """`connected` then `start` for this call and stream."""
        await self.send_json({"event": "connected", "protocol": "Call", "version": "1.0.0"})
        start = {
            "streamSid": self.stream_sid, "accountSid": "AC" + "0" * 32, "callSid": self.call_sid,
            "tracks": ["inbound"], "customParameters": custom or {},
            "mediaFormat": {"encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": 1},
        }  # fmt: skip
        await self.send_json({"event": "start", "sequenceNumber": self._next(),
                              "streamSid": self.stream_sid, "start": start})  # fmt: skip

    async def media(self, payload: bytes) -> None:
        """One inbound µ-law frame."""
        self.chunk += 1
        timestamp = str(int((time.monotonic() - self.started_s) * 1000))
        media = {"track": "inbound", "chunk": str(self.chunk), "timestamp": timestamp,
                 "payload": base64.b64encode(payload).decode()}  # fmt: skip
        await self.send_json({"event": "media", "sequenceNumber": self._next(),
                              "streamSid": self.stream_sid, "media": media})  # fmt: skip

    async def say(self, digits: str, pace_s: float = 0.0) -> None:
        """Speak an utterance as 20 ms µ-law frames."""
        for frame in speech_frames(digits, "raw/mulaw"):
            await self.media(frame)
            if pace_s:
                await asyncio.sleep(pace_s)

    async def dtmf(self, digit: str) -> None:
        """A DTMF digit."""
        await self.send_json({"event": "dtmf", "streamSid": self.stream_sid,
                              "sequenceNumber": self._next(),
                              "dtmf": {"track": "inbound_track", "digit": digit}})  # fmt: skip

    async def mark(self, name: str) -> None:
        """Echo a mark (Twilio does when the audio before it has played)."""
        await self.send_json({"event": "mark", "streamSid": self.stream_sid,
                              "sequenceNumber": self._next(), "mark": {"name": name}})  # fmt: skip

    async def stop(self) -> None:
        """The call ended on Twilio's side."""
        stop = {"accountSid": "AC" + "0" * 32, "callSid": self.call_sid}
        await self.send_json({"event": "stop", "streamSid": self.stream_sid,
                              "sequenceNumber": self._next(), "stop": stop})  # fmt: skip

    async def echo_marks(self) -> list[str]:
        """Echo every received mark not echoed yet (as Twilio does once the audio has played)."""
        names = [m["mark"]["name"] for m in self.of_type("mark")[self.echoed_marks :]]
        for name in names:
            await self.mark(name)
        self.echoed_marks += len(names)
        return names

    def audio_frames(self) -> list[bytes]:
        """The decoded payload of every received `media` message, in order."""
        return [base64.b64decode(m["media"]["payload"]) for m in self.of_type("media")]


async def twilio_status_callback(
    base_url: str, call_sid: str, status: str = "completed", auth_token: str | None = None,
    path: str = "/twilio/status",
) -> int:  # fmt: skip
    """POST a call status callback as Twilio does (form fields, signed with `auth_token`)."""
    url = base_url.replace("ws://", "http://").replace("wss://", "https://") + path
    params = {"CallSid": call_sid, "CallStatus": status, "AccountSid": "AC" + "0" * 32,
              "Timestamp": time.strftime("%a, %d %b %Y %H:%M:%S +0000", time.gmtime()),
              "CallDuration": "12"}  # fmt: skip
    headers = {"Content-Type": "application/x-www-form-urlencoded"}
    if auth_token is not None:
        headers["X-Twilio-Signature"] = RequestValidator(auth_token).compute_signature(url, params)
    request = urllib.request.Request(
        url, data=urllib.parse.urlencode(params).encode(), headers=headers, method="POST"
    )
    return await asyncio.to_thread(_post, request)


def _post(request: urllib.request.Request) -> int:
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return int(response.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)
