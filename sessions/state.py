"""`SessionState`: everything needed to resume a call, as a pydantic model."""

from __future__ import annotations

import base64
import binascii
from datetime import datetime
from enum import StrEnum
from typing import Annotated, Any, ClassVar

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from sessions.clock import as_utc, utc_now
from sessions.errors import InvalidSessionData, SessionEnded
from sessions.keys import CONVERSATION_ID_PATTERN
from sessions.usage import ModelInfo, ModelUsage

SCHEMA_VERSION = 2
DEFAULT_AUDIO_BUFFER_MAX_BYTES = 256 * 1024

UtcDatetime = Annotated[datetime, AfterValidator(as_utc)]
DATETIME_FIELDS = frozenset({"created_at", "last_activity", "ended_at"})


class SessionStatus(StrEnum):
    """Where a session is in its life; ENDED is terminal."""

    INITIATED = "initiated"
    ACTIVE = "active"
    PAUSED = "paused"
    ENDED = "ended"
    ERROR = "error"


RESUMABLE = frozenset({SessionStatus.INITIATED, SessionStatus.ACTIVE, SessionStatus.PAUSED})


class SessionState(BaseModel):
    """The resumable state of one call; `(epoch, seq)` orders its snapshots."""

    model_config = ConfigDict(
        extra="ignore", ser_json_bytes="base64", val_json_bytes="base64", use_enum_values=False
    )

    audio_buffer_max_bytes: ClassVar[int] = DEFAULT_AUDIO_BUFFER_MAX_BYTES

    conversation_id: str = Field(pattern=rf"^(?:{CONVERSATION_ID_PATTERN.pattern})$")
    session_id: str | None = None
    bridge_type: str = "audiocodes"
    bot_name: str = "voice-bot"
    caller: str = "unknown"
    media_format: str = "raw/lpcm16"
    status: SessionStatus = SessionStatus.INITIATED
    created_at: UtcDatetime = Field(default_factory=utc_now)
    last_activity: UtcDatetime = Field(default_factory=utc_now)
    resumed_count: int = Field(default=0, ge=0)
    conversation_history: list[dict[str, Any]] = Field(default_factory=list)
    current_turn: int = Field(default=0, ge=0)
    function_calls: list[dict[str, Any]] = Field(default_factory=list)
    audio_buffer: list[bytes] = Field(default_factory=list)
    audio_metadata: dict[str, Any] = Field(default_factory=dict)
    openai_session_id: str | None = None
    openai_conversation_id: str | None = None
    active_response_id: str | None = None
    realtime: ModelInfo | None = None
    usage: ModelUsage = Field(default_factory=ModelUsage)
    error_count: int = Field(default=0, ge=0)
    last_error: str | None = None
    metadata: dict[str, Any] = Field(default_factory=dict)
    ended_at: UtcDatetime | None = None
    end_reason: str | None = None
    epoch: int = Field(default=1, ge=1)
    seq: int = Field(default=0, ge=0)
    schema_version: int = SCHEMA_VERSION

    # -- validation ---------------------------------------------------------

    @field_validator("audio_buffer")
    @classmethod
    def _bounded_audio(cls, chunks: list[bytes]) -> list[bytes]:
        return _trim_oldest(chunks, cls.audio_buffer_max_bytes) if chunks else chunks

    @model_validator(mode="after")
    def _end_reason_in_metadata(self) -> SessionState:
        if self.end_reason is not None and "end_reason" not in self.metadata:
            self.metadata["end_reason"] = self.end_reason
        return self

    def __setattr__(self, name: str, value: Any) -> None:
        """Assignment keeps the model's types: naive datetimes are taken as UTC, a status
        given as text becomes a SessionStatus (other fields are not re-validated)."""
        if name in DATETIME_FIELDS and isinstance(value, datetime):
            value = as_utc(value)
        elif name == "status" and not isinstance(value, SessionStatus):
            value = _status(value)
        super().__setattr__(name, value)

    # -- conversion ---------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        """A JSON-safe dict: ISO-8601 UTC times, audio chunks as base64."""
        return self.model_dump(mode="json")

    @classmethod
    def from_dict(cls, data: Any) -> SessionState:
        """Build from `to_dict()` output or the older shape; errors name the field.

        The older shape has no `schema_version`: naive times (taken as UTC), audio
        chunks as hex, the end reason in `metadata`.
        """
        try:
            return cls.model_validate(_upgrade(data) if isinstance(data, dict) else data)
        except ValidationError as exc:
            raise InvalidSessionData(describe_validation_error(exc)) from None
        except ValueError as exc:
            raise InvalidSessionData(f"invalid session data: {exc}") from None

    # -- behaviour ----------------------------------------------------------

    def update_activity(self) -> None:
        """Mark activity now and advance `seq`, so the next save supersedes the last."""
        self.last_activity = utc_now()
        self.seq += 1

    def increment_resume_count(self) -> None:
        """Record a resume: count it and make the session ACTIVE (never from ENDED)."""
        self._refuse_if_ended("resume")
        self.resumed_count += 1
        self.status = SessionStatus.ACTIVE
        self.update_activity()

    def add_conversation_item(self, item: dict[str, Any]) -> None:
        """Append a transcript item and count the turn."""
        self.conversation_history.append(dict(item))
        self.current_turn += 1
        self.update_activity()

    def add_function_call(self, function_call: dict[str, Any]) -> None:
        """Append a function call (name, arguments, result) to the history."""
        self.function_calls.append(dict(function_call))
        self.update_activity()

    def add_audio_chunk(self, chunk: bytes) -> None:
        """Keep a chunk of recent audio, dropping the oldest past the byte bound."""
        self.audio_buffer.append(chunk)
        self.audio_buffer = _trim_oldest(self.audio_buffer, self.audio_buffer_max_bytes)

    def set_error(self, error_message: str) -> None:
        """Record an error; the status becomes ERROR unless the session has ended."""
        self.last_error = error_message
        self.error_count += 1
        if self.status is not SessionStatus.ENDED:
            self.status = SessionStatus.ERROR
        self.update_activity()

    def set_status(self, status: SessionStatus | str) -> None:
        """Move to another status; leaving ENDED is refused."""
        new = _status(status)
        if new is not SessionStatus.ENDED:
            self._refuse_if_ended(f"move to {new.value}")
        self.status = new
        self.update_activity()

    def end(self, reason: str, at: datetime | None = None) -> None:
        """End the session with a reason; ending twice keeps the first end."""
        if self.status is SessionStatus.ENDED:
            return
        self.status = SessionStatus.ENDED
        self.end_reason = reason
        self.metadata["end_reason"] = reason
        self.ended_at = at or utc_now()
        self.update_activity()

    def is_expired(self, max_age_seconds: float = 3600) -> bool:
        """True when idle for longer than `max_age_seconds`."""
        return (utc_now() - self.last_activity).total_seconds() > max_age_seconds

    def can_resume(self, max_age_seconds: float | None = None) -> bool:
        """True for a live status that is not past `max_age_seconds` of idleness."""
        if self.status not in RESUMABLE:
            return False
        return max_age_seconds is None or not self.is_expired(max_age_seconds)

    def _refuse_if_ended(self, action: str) -> None:
        if self.status is SessionStatus.ENDED:
            raise SessionEnded(f"session {self.conversation_id!r} has ended; cannot {action}")


def _status(value: Any) -> SessionStatus:
    try:
        return SessionStatus(value)
    except ValueError:
        names = ", ".join(s.value for s in SessionStatus)
        raise InvalidSessionData(f"status: {str(value)[:40]!r} is not one of {names}") from None


def describe_validation_error(exc: ValidationError, prefix: str = "invalid session data") -> str:
    """One line naming each invalid field and what was wrong with it."""
    parts = []
    for err in exc.errors():
        field = ".".join(str(p) for p in err["loc"]) or "<root>"
        parts.append(f"{field}: {err['msg']}")
    return f"{prefix}: " + "; ".join(parts)


def _upgrade(data: dict[str, Any]) -> dict[str, Any]:
    """A dict in the current shape: audio chunks as bytes, legacy fields moved."""
    legacy = "schema_version" not in data
    chunks = data.get("audio_buffer")
    if not legacy and not chunks:
        return data
    data = dict(data)
    if isinstance(chunks, list):
        data["audio_buffer"] = [_decode_chunk(i, c, legacy) for i, c in enumerate(chunks)]
    if legacy:
        meta = data.get("metadata")
        if isinstance(meta, dict) and "end_reason" in meta and "end_reason" not in data:
            data["end_reason"] = meta["end_reason"]
        data["schema_version"] = SCHEMA_VERSION
    return data


def _decode_chunk(index: int, chunk: Any, legacy: bool) -> Any:
    if not isinstance(chunk, str):
        return chunk
    try:
        return bytes.fromhex(chunk) if legacy else base64.b64decode(chunk, validate=True)
    except (ValueError, binascii.Error):
        encoding = "hex" if legacy else "base64"
        raise ValueError(f"audio_buffer[{index}] is not valid {encoding}") from None


def _trim_oldest(chunks: list[bytes], max_bytes: int) -> list[bytes]:
    total = sum(len(c) for c in chunks)
    start = 0
    while total > max_bytes and start < len(chunks):
        total -= len(chunks[start])
        start += 1
    return chunks[start:] if start else chunks
