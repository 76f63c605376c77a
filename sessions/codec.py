"""How a session is laid out as a flat map of fields (a Redis hash), and the snapshot wire shape.

Each field of `SessionState` is one entry holding its JSON text, except
`last_activity`, held as integer microseconds so that server-side scripts can
compare it and use it as an index score. Both backends store this map.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator
from pydantic_core import to_json

from sessions.clock import from_us, to_us
from sessions.errors import CorruptSession, InvalidSessionData
from sessions.keys import check_conversation_id
from sessions.state import SessionState, SessionStatus, describe_validation_error

FIELD_NAMES: tuple[str, ...] = tuple(SessionState.model_fields)
ACTIVITY_FIELD = "last_activity"
ARCHIVED_FIELD = "_archived"
COUNTED_FIELD = "_counted"  # the archived call's numbers are in the statistics (once)
_KNOWN = frozenset(FIELD_NAMES)
_STORED_AS_JSON = tuple(name for name in FIELD_NAMES if name != ACTIVITY_FIELD)


def _json(value: Any) -> str:
    return to_json(value, bytes_mode="base64").decode()


def encode_values(values: Mapping[str, Any]) -> dict[str, str]:
    """The full field map from a state's field values (`vars(state)` or a frozen copy of it)."""
    fields = {name: _json(values[name]) for name in _STORED_AS_JSON}
    fields[ACTIVITY_FIELD] = str(to_us(values[ACTIVITY_FIELD]))
    return fields


def encode_state(state: SessionState) -> dict[str, str]:
    """The full field map of a state."""
    return encode_values(vars(state))


def encode_fields(state: SessionState, names: set[str]) -> dict[str, str]:
    """The stored text of some fields of a state."""
    fields = {name: _json(getattr(state, name)) for name in _STORED_AS_JSON if name in names}
    if ACTIVITY_FIELD in names:
        fields[ACTIVITY_FIELD] = str(to_us(state.last_activity))
    return fields


_PREFIXES = {name: f'"{name}":' for name in FIELD_NAMES if name != ACTIVITY_FIELD}


def fields_to_json(conversation_id: str, fields: Mapping[str, str]) -> str:
    """One JSON document (the `to_dict()` shape) from a stored field map."""
    prefixes = _PREFIXES
    parts = [prefixes[name] + raw for name, raw in fields.items() if name in prefixes]
    activity = fields.get(ACTIVITY_FIELD)
    if activity is not None:
        try:
            parts.append(f'"{ACTIVITY_FIELD}":"{from_us(int(activity)).isoformat()}"')
        except (ValueError, OverflowError):
            raise CorruptSession(conversation_id, f"last_activity {activity[:40]!r}") from None
    return "{" + ",".join(parts) + "}"


def decode_state(conversation_id: str, fields: Mapping[str, str]) -> SessionState:
    """Parse a stored field map; CorruptSession names the conversation on failure."""
    if "conversation_id" not in fields:
        raise CorruptSession(conversation_id, "no conversation_id field")
    try:
        return SessionState.model_validate_json(fields_to_json(conversation_id, fields))
    except ValidationError as exc:
        raise CorruptSession(conversation_id, describe_validation_error(exc)) from None


def decode_flat(conversation_id: str, flat: Sequence[str]) -> SessionState:
    """Like `decode_state`, from a script's HGETALL-style reply (name, text, name, text...)."""
    try:
        fields = dict(zip(flat[0::2], flat[1::2], strict=True))
    except ValueError:
        raise CorruptSession(conversation_id, "a field without a value") from None
    return decode_state(conversation_id, fields)


def decode_dict(conversation_id: str, fields: Mapping[str, str]) -> dict[str, Any]:
    """Like `decode_state(...).to_dict()`: the stored session as a JSON-safe dict."""
    return decode_state(conversation_id, fields).to_dict()


def snapshot_wire(values: Mapping[str, Any]) -> dict[str, Any]:
    """`Snapshot.of_values(values)` in its JSON wire form, built without the model (hot path)."""
    return {
        "conversation_id": values["conversation_id"],
        "epoch": values["epoch"],
        "seq": values["seq"],
        "status": values["status"].value,
        "last_activity_us": to_us(values[ACTIVITY_FIELD]),
        "fields": encode_values(values),
    }


class Snapshot(BaseModel):
    """One session's state at `(epoch, seq)`, as saved by the compare-and-set write."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    conversation_id: str
    epoch: int = Field(ge=1)
    seq: int = Field(ge=0)
    status: SessionStatus
    last_activity_us: int = Field(ge=0)
    fields: dict[str, str]

    @field_validator("conversation_id")
    @classmethod
    def _safe_id(cls, value: str) -> str:
        return check_conversation_id(value)

    @field_validator("fields")
    @classmethod
    def _known_fields(cls, fields: dict[str, str]) -> dict[str, str]:
        unknown = set(fields) - _KNOWN
        if unknown:
            raise ValueError(f"unknown session fields {sorted(unknown)}")
        return fields

    @classmethod
    def of(cls, state: SessionState) -> Snapshot:
        """The snapshot of a state as it is now."""
        return cls.of_values(vars(state))

    @classmethod
    def of_values(cls, values: Mapping[str, Any]) -> Snapshot:
        """The snapshot of a state's field values (`vars(state)` or a frozen copy of it)."""
        return cls.model_construct(
            conversation_id=values["conversation_id"],
            epoch=values["epoch"],
            seq=values["seq"],
            status=values["status"],
            last_activity_us=to_us(values[ACTIVITY_FIELD]),
            fields=encode_values(values),
        )

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Snapshot:
        """A snapshot from a `SessionState.to_dict()` shaped dict (validated)."""
        return cls.of(SessionState.from_dict(dict(data)))

    @classmethod
    def from_wire(cls, data: Any) -> Snapshot:
        """A snapshot from its JSON wire form; InvalidSessionData names the field."""
        try:
            return cls.model_validate(data)
        except ValidationError as exc:
            raise InvalidSessionData(describe_validation_error(exc)) from None
