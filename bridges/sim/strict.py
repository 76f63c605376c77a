"""The strict check of Realtime GA events, against the `openai` package's own models.

`openai.types.realtime` models every GA client and server event. Its unions carry the SDK's
own discriminator marker, which pydantic does not use, so the event class is picked from the
message's `type`; its models keep unknown keys as extras instead of refusing them, so after
validation the check walks the result and reports every key no model defines (the real
server answers those with `unknown_parameter`). The SDK's session model lacks `id`, `object`
and `expires_at`, which the real server sends in `session.created` / `session.updated`:
those three are allowed there.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any, get_args

from openai.types.realtime import RealtimeClientEvent, RealtimeServerEvent
from pydantic import BaseModel, ValidationError

SERVER_SESSION_KEYS = frozenset({"session.id", "session.object", "session.expires_at"})
ALLOWED_EXTRA: dict[str, frozenset[str]] = {
    "session.created": SERVER_SESSION_KEYS,
    "session.updated": SERVER_SESSION_KEYS,
}
TYPE_ERRORS = frozenset({"missing"})
VALUE_ERRORS = frozenset(
    {
        "literal_error",
        "enum",
        "greater_than_equal",
        "less_than_equal",
        "string_too_long",
        "too_long",
        "value_error",
    }
)


class Violation(ValueError):
    """An event the GA protocol does not allow, as the real server would answer it."""

    def __init__(self, code: str, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.param = param

    def as_error(self, event_id: str | None = None) -> dict[str, Any]:
        """The `error` object of the server's answer."""
        return {
            "type": "invalid_request_error",
            "code": self.code,
            "message": str(self),
            "param": self.param,
            "event_id": event_id,
        }


def _classes(union: Any) -> dict[str, type[BaseModel]]:
    """The event classes of an SDK union, by their `type` literal."""
    members = get_args(get_args(union)[0])
    return {get_args(cls.model_fields["type"].annotation)[0]: cls for cls in members}


CLIENT_EVENTS: dict[str, type[BaseModel]] = _classes(RealtimeClientEvent)
SERVER_EVENTS: dict[str, type[BaseModel]] = _classes(RealtimeServerEvent)


def check_client_event(raw: str) -> tuple[dict[str, Any], BaseModel]:
    """A client event parsed and checked: the JSON object and its SDK model; Violation if not."""
    return _check(raw, CLIENT_EVENTS, "client")


def check_server_event(event: dict[str, Any]) -> BaseModel:
    """Check an event the server is about to send; Violation if the GA protocol has no such."""
    return _check(json.dumps(event), SERVER_EVENTS, "server")[1]


def _check(
    raw: str, classes: dict[str, type[BaseModel]], side: str
) -> tuple[dict[str, Any], BaseModel]:
    try:
        data = json.loads(raw)
    except (ValueError, RecursionError):
        raise Violation("invalid_json", "the message is not valid JSON") from None
    if not isinstance(data, dict):
        raise Violation("invalid_json", "the message must be a JSON object")
    kind = data.get("type")
    cls = classes.get(kind) if isinstance(kind, str) else None
    if cls is None:
        shown = str(kind)[:60]
        raise Violation("invalid_value", f"Invalid value: {shown!r}: not a GA {side} event", "type")
    try:
        model = cls.model_validate_json(raw, strict=True)
    except ValidationError as exc:
        raise _violation(exc) from None
    allowed = ALLOWED_EXTRA.get(str(kind), frozenset())
    unknown = [key for key in unknown_keys(model) if key not in allowed]
    if unknown:
        raise Violation("unknown_parameter", f"Unknown parameter: '{unknown[0]}'.", unknown[0])
    return data, model


def unknown_keys(value: Any, path: str = "") -> Iterator[str]:
    """The path of every key, anywhere in a validated model, that its model does not define."""
    if isinstance(value, BaseModel):
        for key in value.model_extra or {}:
            yield _join(path, key)
        for name, info in type(value).model_fields.items():
            yield from unknown_keys(getattr(value, name), _join(path, info.alias or name))
    elif isinstance(value, list | tuple):
        for index, entry in enumerate(value):
            yield from unknown_keys(entry, f"{path}[{index}]")
    elif isinstance(value, dict):
        for key, entry in value.items():
            yield from unknown_keys(entry, _join(path, str(key)))


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def _violation(exc: ValidationError) -> Violation:
    """The problem pydantic found, as the server's error code and parameter path.

    A union reports every member it tried; the member with the fewest errors is the one the
    event meant, and its first error is the one to report.
    """
    branches: dict[tuple[str, ...], list[Any]] = {}
    for error in exc.errors():
        branch = tuple(str(p) for p in error["loc"] if _is_class_name(p))
        branches.setdefault(branch, []).append(error)
    error = min(branches.values(), key=len)[0]
    param = ".".join(str(p) for p in error["loc"] if not _is_class_name(p))
    if error["type"] in TYPE_ERRORS:
        return Violation(
            "missing_required_parameter", f"Missing required parameter: '{param}'.", param
        )
    code = "invalid_value" if error["type"] in VALUE_ERRORS else "invalid_type"
    return Violation(code, f"Invalid {param or 'event'}: {error['msg']}", param or None)


def _is_class_name(part: int | str) -> bool:
    """Union members appear in pydantic's error locations by class name (or a tag)."""
    return isinstance(part, str) and (part[:1].isupper() or part.startswith("function-"))
