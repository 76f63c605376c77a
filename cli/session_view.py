"""How `opus-sessions sessions show` prints one session: fields, transcript, function calls."""

from __future__ import annotations

from typing import Any

from cli.output import compact, make_console, pairs, show, since_text, styled, table
from sessions.clock import utc_now
from sessions.state import SessionState


def show_session(state: SessionState) -> None:
    """The session's fields, then its transcript and function calls as tables."""
    out = make_console()
    show(out, pairs(_fields(state)))
    show(out, styled(f"\ntranscript ({len(state.conversation_history)} items)", "bold"))
    if state.conversation_history:
        show(out, table(("#", "ROLE", "TIME", "TEXT"), _transcript(state), right={0}))
    show(out, styled(f"\nfunction calls ({len(state.function_calls)})", "bold"))
    if state.function_calls:
        show(out, table(("#", "NAME", "ARGUMENTS", "RESULT"), _calls(state), right={0}))


def _fields(state: SessionState) -> list[tuple[str, Any]]:
    now = utc_now()
    rows: list[tuple[str, Any]] = [
        ("conversation_id", state.conversation_id),
        ("status", state.status.value),
        ("caller", state.caller),
        ("bridge_type", state.bridge_type),
        ("bot_name", state.bot_name),
        ("session_id", state.session_id),
        ("created_at", since_text(state.created_at, now)),
        ("last_activity", since_text(state.last_activity, now)),
        ("resumed_count", state.resumed_count),
        ("current_turn", state.current_turn),
        ("epoch / seq", f"{state.epoch} / {state.seq}"),
        ("errors", f"{state.error_count} (last: {state.last_error})" if state.error_count else 0),
        ("openai_session_id", state.openai_session_id),
    ]
    if state.ended_at is not None:
        rows += [("ended_at", since_text(state.ended_at, now)), ("end_reason", state.end_reason)]
    if state.metadata:
        rows.append(("metadata", compact(state.metadata)))
    return rows


def _transcript(state: SessionState) -> list[tuple[Any, ...]]:
    return [
        (i, item.get("role", "-"), _item_time(item), _item_text(item))
        for i, item in enumerate(state.conversation_history, 1)
    ]


def _calls(state: SessionState) -> list[tuple[Any, ...]]:
    return [
        (i, call.get("name", "-"), compact(call.get("arguments")), compact(call.get("result")))
        for i, call in enumerate(state.function_calls, 1)
    ]


def _item_time(item: dict[str, Any]) -> Any:
    for key in ("timestamp", "time", "created_at", "at"):
        if item.get(key) is not None:
            return item[key]
    return None


def _item_text(item: dict[str, Any]) -> str:
    for key in ("content", "text", "transcript"):
        value = item.get(key)
        if isinstance(value, str):
            return value
        if isinstance(value, list):
            parts = [p.get("text") or p.get("transcript") for p in value if isinstance(p, dict)]
            return " ".join(p for p in parts if isinstance(p, str))
    return compact({k: v for k, v in item.items() if k != "role"})
