"""History is append-only: a call's turns and function calls merge by entry id on every write.

A session's `conversation_history` and `function_calls` are JSON lists of entries. An entry
that starts with `{"id":"...","timestamp":"..."` (as the bridges write them: `history_entry`)
has an identity; a write never drops such an entry. A snapshot that is applied keeps the
stored entries it lacks, and a snapshot that is fenced (older epoch or seq, or an ended or
archived session) still adds the entries the store lacks and nothing else. Each added entry
goes before the first entry with a later timestamp (ISO-8601 UTC with microseconds, so that
text order is time order), or at the end.

The rule works on the stored JSON text, never re-encoding an entry, so the Redis scripts
(`sessions.redis_scripts`, in Lua) and the memory backend apply it to the letter alike:
both split a list at its top-level commas, and both give up (keep the winner as it is) on
text that does not split back into itself.
"""

from __future__ import annotations

import re
import uuid
from datetime import datetime
from typing import Any

from sessions.clock import utc_now

HISTORY_FIELDS = ("conversation_history", "function_calls")
ENTRY_ID = re.compile(r'\{"id":"([^"\\]*)"')
ENTRY_TIME = re.compile(r'\{"id":"[^"\\]*","timestamp":"([^"\\]*)"')
_SIGNIFICANT = re.compile(r'[\[\]{}",]')
_STRING_END = re.compile(r'["\\]')


def new_entry_id(kind: str = "turn") -> str:
    """A unique id for a history entry."""
    return f"{kind}_{uuid.uuid4().hex[:16]}"


def timestamp(moment: datetime | None = None) -> str:
    """An entry's timestamp: ISO-8601 UTC, always with microseconds (text order = time order)."""
    return (moment or utc_now()).isoformat(timespec="microseconds")


def history_entry(entry_id: str, **fields: Any) -> dict[str, Any]:
    """A history entry with its identity first: `id`, then `timestamp`, then `fields`."""
    stamp = fields.pop("timestamp", None) or timestamp()
    return {"id": entry_id, "timestamp": stamp, **fields}


def merge(winner: str, other: str | None) -> tuple[str, int]:
    """`winner` with the identified entries of `other` it lacks; and how many were added."""
    if other is None or covers(winner, other):
        return winner, 0
    mine, theirs = elements(winner), elements(other)
    if mine is None or theirs is None:
        return winner, 0
    seen = {entry_id for element in mine if (entry_id := _id(element)) is not None}
    added = 0
    for element in theirs:
        entry_id = _id(element)
        if entry_id is None or entry_id in seen:
            continue
        seen.add(entry_id)
        mine.insert(_position(mine, _time(element)), element)
        added += 1
    if not added:
        return winner, 0
    return "[" + ",".join(mine) + "]", added


def covers(winner: str, other: str) -> bool:
    """Whether `other`'s entries are the first entries of `winner` (the common, cheap case)."""
    size = len(other)
    if size <= 2:
        return True
    if len(winner) < size or winner[: size - 1] != other[: size - 1]:
        return False
    return winner[size - 1] in "],"


def elements(text: str) -> list[str] | None:
    """The top-level elements of a compact JSON array, as text; None if it is not one."""
    if not text.startswith("["):
        return None
    items: list[str] = []
    depth, start, pos = 0, -1, 0
    while True:
        found = _SIGNIFICANT.search(text, pos)
        if found is None:
            return None
        index, char = found.start(), found.group()
        if char == '"':
            pos = _skip_string(text, index + 1)
            if pos < 0:
                return None
            if depth == 1 and start < 0:
                start = index
            continue
        pos = index + 1
        if char in "[{":
            depth += 1
            if depth == 2 and start < 0:
                start = index
        elif char in "]}":
            depth -= 1
            if depth == 0:
                if start >= 0:
                    items.append(text[start:index])
                rebuilt = "[" + ",".join(items) + "]"
                return items if rebuilt == text else None
        elif depth == 1:
            if start >= 0:
                items.append(text[start:index])
            start = -1


def _skip_string(text: str, pos: int) -> int:
    """The index after the closing quote of a string whose body starts at `pos` (-1: none)."""
    while True:
        found = _STRING_END.search(text, pos)
        if found is None:
            return -1
        if found.group() == "\\":
            pos = found.start() + 2
        else:
            return found.start() + 1


def _id(element: str) -> str | None:
    found = ENTRY_ID.match(element)
    return found.group(1) if found else None


def _time(element: str) -> str | None:
    found = ENTRY_TIME.match(element)
    return found.group(1) if found else None


def _position(entries: list[str], moment: str | None) -> int:
    """Where an entry of time `moment` goes: before the first later entry, else at the end."""
    if moment is not None:
        for index, element in enumerate(entries):
            other = _time(element)
            if other is not None and other > moment:
                return index
    return len(entries)
