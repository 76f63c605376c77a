"""History replay: a call's turns and function calls as GA `conversation.item.create` events.

No server-side resume exists, so a resumed (or rolled-over, or reconnected) call opens a new
model session and replays what was said: user turns as `input_text`, assistant turns as
`output_text` (its audio is replayed as the transcript), each function call followed by its
output. A system message before the history says what follows; one after it keeps the model
answering by voice (after many injected text items a model may otherwise answer in text).
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

RESUME_ANCHOR = (
    "The call was resumed; the conversation so far follows. Continue it by voice from where "
    "it left off."
)
VOICE_ANCHOR = "End of the earlier conversation. Keep answering the caller with speech."
CONTENT_TYPES = {"user": "input_text", "assistant": "output_text"}


def history_items(
    conversation_history: list[dict[str, Any]], function_calls: list[dict[str, Any]]
) -> list[dict[str, Any]]:
    """`conversation.item.create` events replaying a call's history into a new session."""
    items: list[dict[str, Any]] = []
    for index, (kind, entry) in enumerate(_interleave(conversation_history, function_calls)):
        items += _message_items(entry) if kind == "turn" else _call_items(entry, index)
    if not items:
        return []
    opening = _message("system", "input_text", RESUME_ANCHOR)
    closing = _message("system", "input_text", VOICE_ANCHOR)
    return [_create(item) for item in [opening, *items, closing]]


def _create(item: dict[str, Any]) -> dict[str, Any]:
    return {"type": "conversation.item.create", "item": item}


def _message(role: str, content_type: str, text: str) -> dict[str, Any]:
    return {"type": "message", "role": role, "content": [{"type": content_type, "text": text}]}


def _message_items(turn: dict[str, Any]) -> list[dict[str, Any]]:
    """A user turn as `input_text`, an assistant turn as `output_text`; others are skipped."""
    content, role = turn.get("content"), turn.get("role")
    if not isinstance(content, str) or not content.strip() or role not in CONTENT_TYPES:
        return []
    return [_message(str(role), CONTENT_TYPES[str(role)], content.strip())]


def _call_items(call: dict[str, Any], index: int) -> list[dict[str, Any]]:
    """A function call and its output, sharing one call id."""
    call_id = str(call.get("call_id") or f"call_replay_{index}")
    arguments = call.get("arguments")
    if not isinstance(arguments, str):
        arguments = json.dumps(arguments if arguments is not None else {}, default=str)
    result = call.get("result", call.get("output"))
    output = result if isinstance(result, str) else json.dumps(result, default=str)
    name = str(call.get("name") or "unknown_function")
    return [
        {"type": "function_call", "call_id": call_id, "name": name, "arguments": arguments},
        {"type": "function_call_output", "call_id": call_id, "output": output},
    ]


def _interleave(
    turns: list[dict[str, Any]], calls: list[dict[str, Any]]
) -> list[tuple[str, dict[str, Any]]]:
    """Turns and calls merged by timestamp (each list keeps its order; ties go to the turn)."""
    merged: list[tuple[str, dict[str, Any]]] = []
    turn_index = call_index = 0
    while turn_index < len(turns) or call_index < len(calls):
        if call_index < len(calls) and (
            turn_index >= len(turns) or _earlier(calls[call_index], turns[turn_index])
        ):
            merged.append(("call", calls[call_index]))
            call_index += 1
        else:
            merged.append(("turn", turns[turn_index]))
            turn_index += 1
    return merged


def _earlier(first: dict[str, Any], second: dict[str, Any]) -> bool:
    a, b = _when(first), _when(second)
    return a is not None and b is not None and a < b


def _when(entry: dict[str, Any]) -> datetime | None:
    """An entry's timestamp (ISO string or epoch seconds) as an aware datetime, if it has one."""
    value = entry.get("timestamp")
    try:
        if isinstance(value, int | float) and not isinstance(value, bool):
            return datetime.fromtimestamp(value, UTC)
        if isinstance(value, str):
            moment = datetime.fromisoformat(value)
            return moment if moment.tzinfo else moment.replace(tzinfo=UTC)
    except (ValueError, OverflowError, OSError):
        return None
    return None
