"""Reads over every shard's indexes and counters, without I/O: the commands, and the merge.

Each read is a `FanOut`: one command per shard and the function that merges their replies.
The async and sync stores send the commands (one pipeline, or one command for one shard)
and merge what comes back, so both read the shards alike.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from sessions.keys import KeySpace

T = TypeVar("T")
Command = tuple[str | int, ...]


@dataclass(frozen=True)
class FanOut(Generic[T]):
    """One command per shard, and how their replies make one answer."""

    commands: list[Command]
    merge: Callable[[list[Any]], T]


def _scored(reply: Any) -> Iterable[tuple[str, float]]:
    """(member, score) pairs of a WITHSCORES reply, flat or paired."""
    items = list(reply or [])
    if items and isinstance(items[0], list | tuple):
        return ((str(m), float(s)) for m, s in items)
    return ((str(items[i]), float(items[i + 1])) for i in range(0, len(items), 2))


def _by_score(replies: list[Any], limit: int | None = None) -> list[str]:
    merged = sorted((score, member) for reply in replies for member, score in _scored(reply))
    ids = [member for _, member in merged]
    return ids if limit is None else ids[:limit]


def _summed(replies: list[Any]) -> dict[str, int]:
    total: Counter[str] = Counter()
    for reply in replies:
        for name, value in (reply or {}).items():
            total[str(name)] += int(value)
    return dict(total)


def live_ids(keys: KeySpace) -> FanOut[list[str]]:
    """Live ids, least recently active first."""
    commands: list[Command] = [
        ("ZRANGE", keys.live_index(s), 0, -1, "WITHSCORES") for s in keys.all_shards
    ]
    return FanOut(commands, _by_score)


def archive_ids(keys: KeySpace) -> FanOut[list[str]]:
    """Ended ids waiting for their archive, oldest end first."""
    commands: list[Command] = [
        ("ZRANGE", keys.archive_index(s), 0, -1, "WITHSCORES") for s in keys.all_shards
    ]
    return FanOut(commands, _by_score)


def archive_overdue(keys: KeySpace, cutoff_us: int, limit: int) -> FanOut[list[str]]:
    """Up to `limit` ended ids unarchived since before `cutoff_us`, oldest first."""
    commands: list[Command] = [
        ("ZRANGEBYSCORE", keys.archive_index(s), "-inf", cutoff_us, "WITHSCORES", "LIMIT", 0,
         limit)
        for s in keys.all_shards
    ]  # fmt: skip
    return FanOut(commands, lambda replies: _by_score(replies, limit))


def live_count(keys: KeySpace) -> FanOut[int]:
    """Number of live sessions."""
    commands: list[Command] = [("ZCARD", keys.live_index(s)) for s in keys.all_shards]
    return FanOut(commands, lambda replies: sum(int(r) for r in replies))


def archive_backlog(keys: KeySpace) -> FanOut[int]:
    """Number of ended sessions waiting for their archive."""
    commands: list[Command] = [("ZCARD", keys.archive_index(s)) for s in keys.all_shards]
    return FanOut(commands, lambda replies: sum(int(r) for r in replies))


def status_counts(keys: KeySpace) -> FanOut[dict[str, int]]:
    """Stored sessions per status (zeros left out)."""
    commands: list[Command] = [("HGETALL", keys.status_counts(s)) for s in keys.all_shards]
    return FanOut(commands, lambda r: {k: v for k, v in _summed(r).items() if v})


def events(keys: KeySpace) -> FanOut[dict[str, int]]:
    """The event counters, summed over the shards (times such as `last_sweep_us`: the latest)."""

    def merge(replies: list[Any]) -> dict[str, int]:
        out = _summed(replies)
        for name in {str(n) for reply in replies for n in (reply or {}) if _is_time(str(n))}:
            out[name] = max(int(r[name]) for r in replies if r and name in r)
        return out

    commands: list[Command] = [("HGETALL", keys.events(s)) for s in keys.all_shards]
    return FanOut(commands, merge)


def recent_durations(keys: KeySpace) -> FanOut[list[float]]:
    """Durations (s) of the most recently archived calls (every shard's recent ones)."""
    commands: list[Command] = [("LRANGE", keys.durations(s), 0, -1) for s in keys.all_shards]
    return FanOut(commands, lambda replies: [float(v) for r in replies for v in (r or [])])


def _is_time(name: str) -> bool:
    return name.endswith("_us")
