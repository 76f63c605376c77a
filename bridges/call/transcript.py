"""The transcript of a call: caller and bot turns, with timestamps, kept in the session state."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from sessions.history import history_entry, new_entry_id
from sessions.state import SessionState


class TranscriptManager:
    """Adds turns to the state's conversation history and hands each change to `save`.

    Each turn is a history entry with an id of its own (so that it merges by id in storage)
    and, when the model made it, the model's item id (so that a repeated event adds nothing).
    """

    def __init__(self, state: SessionState, save: Callable[[SessionState], None]) -> None:
        self.state = state
        self._save = save
        self._seen_items: set[str] = {
            str(item["item_id"]) for item in state.conversation_history if item.get("item_id")
        }

    def caller(self, text: str, item_id: str | None = None) -> dict[str, Any] | None:
        """A caller turn (the model's transcription of the caller's speech)."""
        return self._add("user", text, item_id)

    def bot(self, text: str, item_id: str | None = None) -> dict[str, Any] | None:
        """A bot turn (the transcript of what the model said)."""
        return self._add("assistant", text, item_id)

    def unheard(self, item_id: str | None = None) -> dict[str, Any] | None:
        """A caller turn whose transcription failed: kept (empty) so the turn is not lost."""
        return self._add("user", "", item_id, kind="unheard")

    def event(self, text: str) -> dict[str, Any] | None:
        """Something the caller did that is not speech (a DTMF digit), as a caller turn."""
        return self._add("user", text, None, kind="event")

    def _add(
        self, role: str, text: str, item_id: str | None, kind: str = "speech"
    ) -> dict[str, Any] | None:
        if item_id is not None and item_id in self._seen_items:
            return None  # a replayed or repeated event: the turn is already there
        item = history_entry(new_entry_id(), role=role, content=text, kind=kind)
        if item_id is not None:
            item["item_id"] = item_id
            self._seen_items.add(item_id)
        self.state.add_conversation_item(item)
        self._save(self.state)
        return item
