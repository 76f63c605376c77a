"""Small builders shared by the tests."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from sessions.codec import Snapshot
from sessions.state import SessionState, SessionStatus


def make_state(conversation_id: str, idle_s: float = 0, **fields: Any) -> SessionState:
    """An ACTIVE session last active `idle_s` seconds ago."""
    fields.setdefault("status", SessionStatus.ACTIVE)
    return SessionState(
        conversation_id=conversation_id,
        last_activity=datetime.now(UTC) - timedelta(seconds=idle_s),
        **fields,
    )


def snapshot(state: SessionState, **changes: Any) -> Snapshot:
    """The snapshot of a copy of `state` with `changes` applied."""
    return Snapshot.of(state.model_copy(update=changes, deep=True))
