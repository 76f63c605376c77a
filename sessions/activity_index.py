"""An in-process index of ids by activity time: O(1) touch, sweeps cost what they find.

Ids touched with a time at or after the newest one (the usual case: "now") are
appended to an insertion-ordered dict, so the dict stays sorted by time. An id
given an older time goes to a small heap instead. The oldest entry is the
smaller of the dict's head and the heap's top.
"""

from __future__ import annotations

import heapq
from collections import OrderedDict
from collections.abc import Iterator


class ActivityIndex:
    """Ids ordered by a time in integer microseconds."""

    def __init__(self) -> None:
        self._scores: dict[str, int] = {}
        self._ordered: OrderedDict[str, int] = OrderedDict()
        self._late: list[tuple[int, str]] = []

    def __len__(self) -> int:
        return len(self._scores)

    def __contains__(self, key: object) -> bool:
        return key in self._scores

    def __iter__(self) -> Iterator[str]:
        """Ids, oldest first (sorts the late heap; for listing, not for hot paths)."""
        late = sorted({(s, k) for s, k in self._late if self._is_late_entry(k, s)})
        merged = heapq.merge(((s, k) for k, s in self._ordered.items()), late)
        return (k for _, k in merged)

    def score(self, key: str) -> int | None:
        """The time of an id, or None."""
        return self._scores.get(key)

    def set(self, key: str, us: int) -> None:
        """Place an id at a time."""
        self._ordered.pop(key, None)
        self._scores[key] = us
        if not self._ordered or us >= next(reversed(self._ordered.values())):
            self._ordered[key] = us
        else:
            heapq.heappush(self._late, (us, key))
            self._compact()

    def remove(self, key: str) -> None:
        """Forget an id (its heap entry, if any, is dropped lazily)."""
        if self._scores.pop(key, None) is not None:
            self._ordered.pop(key, None)

    def oldest(self) -> tuple[str, int] | None:
        """The id with the smallest time, and that time."""
        self._drop_stale_top()
        head = next(iter(self._ordered.items()), None)
        top = self._late[0] if self._late else None
        if top is not None and (head is None or top[0] < head[1]):
            return top[1], top[0]
        return head

    def pop_older_than(self, cutoff_us: int, limit: int) -> list[str]:
        """Remove and return up to `limit` ids with time <= cutoff, oldest first."""
        out: list[str] = []
        while len(out) < limit:
            oldest = self.oldest()
            if oldest is None or oldest[1] > cutoff_us:
                break
            self.remove(oldest[0])
            out.append(oldest[0])
        return out

    def _is_late_entry(self, key: str, us: int) -> bool:
        return key not in self._ordered and self._scores.get(key) == us

    def _drop_stale_top(self) -> None:
        while self._late and not self._is_late_entry(self._late[0][1], self._late[0][0]):
            heapq.heappop(self._late)

    def _compact(self) -> None:
        if len(self._late) > 64 and len(self._late) > 2 * (len(self._scores) - len(self._ordered)):
            self._late = [(s, k) for s, k in self._late if self._is_late_entry(k, s)]
            heapq.heapify(self._late)
