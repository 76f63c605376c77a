"""The telephony side of a WebSocket: bounded, parsed, validated messages and serialized sends."""

from __future__ import annotations

import binascii
import json
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError
from starlette.websockets import WebSocket, WebSocketDisconnect, WebSocketState

from bridges.audio import from_base64, to_base64
from bridges.errors import ProtocolError
from sessions.state import describe_validation_error

CLOSE_NORMAL = 1000
CLOSE_POLICY = 1008
CLOSE_ERROR = 1011

Model = TypeVar("Model", bound=BaseModel)


@dataclass(frozen=True)
class Incoming:
    """One message from the peer: parsed JSON (or the reason it could not be) and when it came."""

    data: dict[str, Any] | None
    error: str | None
    received_s: float


class Peer:
    """Reads JSON text messages with a size bound; sends JSON one message at a time."""

    def __init__(self, websocket: WebSocket, max_frame_bytes: int) -> None:
        self.websocket = websocket
        self.max_frame_bytes = max_frame_bytes

    async def messages(self) -> AsyncIterator[Incoming]:
        """Messages until the peer disconnects; malformed ones carry an error instead of data."""
        while True:
            try:
                message = await self.websocket.receive()
            except (WebSocketDisconnect, RuntimeError):
                return
            if message["type"] == "websocket.disconnect":
                return
            received_s = time.perf_counter()
            raw = message.get("text")
            if raw is None:
                yield Incoming(None, "binary frames are not accepted", received_s)
                continue
            yield parse(raw, received_s, self.max_frame_bytes)

    async def send(self, data: dict[str, Any]) -> None:
        """Send one JSON message (dropped quietly once the socket is closed)."""
        await self.send_text(json.dumps(data, separators=(",", ":")))

    async def send_text(self, text: str) -> None:
        """Send one message already encoded as JSON text (the audio path builds its own)."""
        if self.websocket.application_state is not WebSocketState.CONNECTED:
            return
        try:
            await self.websocket.send_text(text)
        except (WebSocketDisconnect, RuntimeError):
            return

    async def close(self, code: int = CLOSE_NORMAL, reason: str = "") -> None:
        """Close the socket if it is still open."""
        if self.websocket.application_state is WebSocketState.CONNECTED:
            try:
                await self.websocket.close(code, reason.encode()[:120].decode(errors="ignore"))
            except (RuntimeError, WebSocketDisconnect):
                return


def parse(raw: str, received_s: float, max_frame_bytes: int) -> Incoming:
    """A text frame as a JSON object, or the reason it is not one."""
    size = len(raw)
    if size > max_frame_bytes:
        return Incoming(None, f"message of {size} bytes exceeds {max_frame_bytes}", received_s)
    try:
        data = json.loads(raw)
    except ValueError:
        return Incoming(None, "malformed JSON", received_s)
    except RecursionError:  # nesting deeper than the interpreter's recursion limit
        return Incoming(None, "malformed JSON: nested too deeply", received_s)
    if not isinstance(data, dict):
        return Incoming(None, "a message must be a JSON object", received_s)
    return Incoming(data, None, received_s)


def validate(model: type[Model], data: dict[str, Any]) -> Model:
    """A message as its pydantic model; ProtocolError names the field that is wrong."""
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        kind = data.get("type") or data.get("event")
        raise ProtocolError(describe_validation_error(exc, f"invalid {kind}")) from None


def decode_audio(payload: str) -> bytes:
    """Base64 audio; ProtocolError when it is not valid base64."""
    try:
        return from_base64(payload)
    except (binascii.Error, ValueError):
        raise ProtocolError("audio is not valid base64") from None


def encode_audio(chunk: bytes) -> str:
    """Audio as base64 text."""
    return to_base64(chunk)
