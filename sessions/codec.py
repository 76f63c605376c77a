"""How a session is laid out as a flat map of fields (a Redis hash), and the snapshot wire shape.

Each field of `SessionState` is one entry holding its JSON text, except
`last_activity`, held as integer microseconds so that server-side scripts can
compare it and use it as an index score. Both backends store this map.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator
from pydantic_core import from_json, to_json

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
HISTORY_FIELD = "conversation_history"
_SHORT_HISTORY = 64  # chars: below this the model's own parse costs no more


def decode_state(conversation_id: str, fields: Mapping[str, str]) -> SessionState:
    """Parse a stored field map; CorruptSession names the conversation on failure."""
    return _decode(conversation_id, fields.items())


def decode_flat(conversation_id: str, flat: Sequence[str]) -> SessionState:
    """Like `decode_state`, from a script's HGETALL-style reply (name, text, name, text...)."""
    if len(flat) % 2:
        raise CorruptSession(conversation_id, "a field without a value")
    return _decode(conversation_id, zip(flat[0::2], flat[1::2], strict=True))


def _decode(conversation_id: str, pairs: Iterable[tuple[str, str]]) -> SessionState:
    """One JSON document (the `to_dict()` shape) from the stored texts, validated by the model.

    A long history is parsed apart, straight to Python objects: its items are free-form
    dicts, and the model's validation of them costs as much again as the parse (about 20 µs
    for 50 turns) while checking no more than that each item is an object.
    """
    parts, activity, history = [], None, None
    for name, raw in pairs:
        prefix = _PREFIXES.get(name)
        if prefix is None:
            activity = raw if name == ACTIVITY_FIELD else activity
        elif name == HISTORY_FIELD and len(raw) > _SHORT_HISTORY:
            history = raw
        else:
            parts.append(prefix + raw)
    if activity is not None:
        parts.append(f'"{ACTIVITY_FIELD}":"{_activity_iso(conversation_id, activity)}"')
    try:
        state = SessionState.model_validate_json("{" + ",".join(parts) + "}")
    except ValidationError as exc:
        if not any(p.startswith('"conversation_id":') for p in parts):
            raise CorruptSession(conversation_id, "no conversation_id field") from None
        raise CorruptSession(conversation_id, describe_validation_error(exc)) from None
    if history is not None:
        _set_history(state, _parse_history(conversation_id, history))
    return state


def _activity_iso(conversation_id: str, activity: str) -> str:
    try:
        return from_us(int(activity)).isoformat()
    except (ValueError, OverflowError):
        raise CorruptSession(conversation_id, f"last_activity {activity[:40]!r}") from None


def _parse_history(conversation_id: str, raw: str) -> list[dict[str, Any]]:
    try:
        items = from_json(raw)
    except ValueError as exc:
        raise CorruptSession(conversation_id, f"{HISTORY_FIELD}: {exc}") from None
    if type(items) is not list or not all(type(item) is dict for item in items):
        raise CorruptSession(conversation_id, f"{HISTORY_FIELD}: not a list of objects")
    return items


def _set_history(state: SessionState, items: list[dict[str, Any]]) -> None:
    """The value as validation would have set it (the model keeps its fields in `__dict__`)."""
    state.__dict__[HISTORY_FIELD] = items
    state.__pydantic_fields_set__.add(HISTORY_FIELD)


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
