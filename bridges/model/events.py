"""The GA server events the bridge handles: their names, and typed shapes for the rare ones.

Hot events (audio deltas) are read as plain dicts. The events whose structure the bridge
keeps (errors, usage, the session's deadline, rate limits) are parsed into the models below,
which ignore keys they do not name: the server adds fields over time. Their shapes follow
the `openai` package's `openai.types.realtime` models (the tests hold them to it).
"""

from __future__ import annotations

import logging
from typing import Any, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, ValidationError

from sessions.usage import ModelUsage

log = logging.getLogger(__name__)

SESSION_CREATED = "session.created"
SESSION_UPDATED = "session.updated"
ERROR = "error"
SPEECH_STARTED = "input_audio_buffer.speech_started"
SPEECH_STOPPED = "input_audio_buffer.speech_stopped"
COMMITTED = "input_audio_buffer.committed"
ITEM_ADDED = "conversation.item.added"
ITEM_DONE = "conversation.item.done"
TRANSCRIPTION_DELTA = "conversation.item.input_audio_transcription.delta"
TRANSCRIPTION_COMPLETED = "conversation.item.input_audio_transcription.completed"
TRANSCRIPTION_FAILED = "conversation.item.input_audio_transcription.failed"
RESPONSE_CREATED = "response.created"
RESPONSE_DONE = "response.done"
OUTPUT_ITEM_DONE = "response.output_item.done"
AUDIO_DELTA = "response.output_audio.delta"
AUDIO_DONE = "response.output_audio.done"
AUDIO_TRANSCRIPT_DELTA = "response.output_audio_transcript.delta"
AUDIO_TRANSCRIPT_DONE = "response.output_audio_transcript.done"
TEXT_DELTA = "response.output_text.delta"
TEXT_DONE = "response.output_text.done"
FUNCTION_ARGUMENTS_DONE = "response.function_call_arguments.done"
RATE_LIMITS_UPDATED = "rate_limits.updated"

# Events the client itself reports to the bridge (never sent by the server).
CLIENT_RECONNECTED = "client.reconnected"
CLIENT_FAILED = "client.failed"
CLIENT_ROLLED_OVER = "client.rolled_over"


class _Lenient(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)


class ServerError(_Lenient):
    """The `error` of an `error` event (or of a failed response or transcription)."""

    type: str = ""
    code: str | None = None
    message: str = ""
    param: str | None = None
    event_id: str | None = None


class SessionInfo(_Lenient):
    """What `session.created` says of the session the bridge cares about."""

    id: str | None = None
    model: str | None = None
    expires_at: int | None = None


class _Cached(_Lenient):
    text_tokens: int = 0
    audio_tokens: int = 0


class _InputDetails(_Lenient):
    text_tokens: int = 0
    audio_tokens: int = 0
    cached_tokens: int = 0
    cached_tokens_details: _Cached = _Cached()


class _OutputDetails(_Lenient):
    text_tokens: int = 0
    audio_tokens: int = 0


class ResponseUsage(_Lenient):
    """`response.done`'s `response.usage`."""

    input_tokens: int = 0
    output_tokens: int = 0
    input_token_details: _InputDetails = _InputDetails()
    output_token_details: _OutputDetails = _OutputDetails()

    def as_usage(self) -> ModelUsage:
        """The usage in the session's terms (one response)."""
        given, out = self.input_token_details, self.output_token_details
        return ModelUsage(
            responses=1,
            input_tokens=self.input_tokens,
            input_text_tokens=given.text_tokens,
            input_audio_tokens=given.audio_tokens,
            cached_tokens=given.cached_tokens,
            cached_text_tokens=given.cached_tokens_details.text_tokens,
            cached_audio_tokens=given.cached_tokens_details.audio_tokens,
            output_tokens=self.output_tokens,
            output_text_tokens=out.text_tokens,
            output_audio_tokens=out.audio_tokens,
        )


class TranscriptionUsage(_Lenient):
    """A transcription's `usage`: billed by tokens, or by audio duration."""

    type: Literal["tokens", "duration"] = "tokens"
    input_tokens: int = 0
    output_tokens: int = 0
    seconds: float = 0.0

    def as_usage(self) -> ModelUsage:
        """The usage in the session's terms."""
        if self.type == "duration":
            return ModelUsage(transcription_ms=round(self.seconds * 1000))
        return ModelUsage(
            transcription_input_tokens=self.input_tokens,
            transcription_output_tokens=self.output_tokens,
        )


class ResponseSummary(_Lenient):
    """`response.created` / `response.done`'s `response`: id, status and usage."""

    id: str | None = None
    status: str | None = None
    conversation_id: str | None = None
    status_details: dict[str, Any] | None = None
    usage: ResponseUsage | None = None


class RateLimit(_Lenient):
    """One entry of `rate_limits.updated`."""

    name: str | None = None
    limit: int | None = None
    remaining: int | None = None
    reset_seconds: float | None = None


Shape = TypeVar("Shape", bound=_Lenient)


def parse(shape: type[Shape], value: Any, event_type: str) -> Shape | None:
    """`value` as `shape`, or None (logged at debug) when it does not fit."""
    try:
        return shape.model_validate(value if value is not None else {})
    except ValidationError as exc:
        log.debug("ignoring a malformed %s: %s", event_type, exc.errors()[:1])
        return None


def server_error(event: dict[str, Any]) -> ServerError:
    """The error an `error` event carries (an empty one when it carries none)."""
    return parse(ServerError, event.get("error"), ERROR) or ServerError()


def response_summary(event: dict[str, Any]) -> ResponseSummary:
    """The response of a `response.created` or `response.done` event."""
    return parse(ResponseSummary, event.get("response"), str(event.get("type"))) or (
        ResponseSummary()
    )


def transcription_usage(event: dict[str, Any]) -> ModelUsage | None:
    """The usage of a completed transcription, if it reports one."""
    usage = event.get("usage")
    parsed = parse(TranscriptionUsage, usage, TRANSCRIPTION_COMPLETED) if usage else None
    return parsed.as_usage() if parsed is not None else None


def rate_limits(event: dict[str, Any]) -> list[RateLimit]:
    """The entries of a `rate_limits.updated` event."""
    entries = event.get("rate_limits")
    if not isinstance(entries, list):
        return []
    parsed = (parse(RateLimit, entry, RATE_LIMITS_UPDATED) for entry in entries)
    return [entry for entry in parsed if entry is not None]
