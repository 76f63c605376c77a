"""The in-process store: the Redis scripts' rules under one lock (sync; tasks use it directly)."""

from __future__ import annotations

import json
import logging
import secrets
import threading
import time
from collections import Counter, deque
from collections.abc import Mapping, Sequence
from typing import Any

from sessions.activity_index import ActivityIndex
from sessions.clock import from_us, now_us
from sessions.codec import (
    ACTIVITY_FIELD,
    ARCHIVED_FIELD,
    COUNTED_FIELD,
    Snapshot,
    decode_state,
    encode_state,
)
from sessions.history import HISTORY_FIELDS, merge
from sessions.redis_ops import DURATIONS_KEPT
from sessions.state import SessionState
from sessions.storage import (
    EXPIRED_REASON,
    ArchiveMark,
    ClaimOutcome,
    ClaimResult,
    CreateResult,
    EndOutcome,
    ExpireResult,
    SaveOutcome,
    SaveResult,
    StoredSession,
    UpdateOutcome,
    count_saves,
)

log = logging.getLogger(__name__)

ENDED = "ended"


def _status(fields: Mapping[str, str]) -> str:
    return str(json.loads(fields["status"]))


def _fenced(record: Mapping[str, str], snap: Snapshot) -> bool:
    """Whether a snapshot may not be applied over `record` (as the save script decides)."""
    if ARCHIVED_FIELD in record:
        return True
    if (int(record["epoch"]), int(record["seq"])) >= (snap.epoch, snap.seq):
        return True
    return _status(record) == ENDED and snap.status.value != ENDED


class MemoryStore:
    """Thread-safe synchronous core; every operation holds one lock briefly."""

    def __init__(self, max_sessions: int = 1000, session_ttl_s: float = 3600) -> None:
        if max_sessions < 1:
            raise ValueError("max_sessions must be at least 1")
        self.max_sessions = max_sessions
        self.session_ttl_s = session_ttl_s
        self.evictions = 0
        self._lock = threading.Lock()
        self._records: dict[str, dict[str, str]] = {}
        self._live = ActivityIndex()
        self._recency = ActivityIndex()
        self._archive: dict[str, int] = {}
        self._counts: Counter[str] = Counter()
        self._events: Counter[str] = Counter()
        self._durations: deque[float] = deque(maxlen=DURATIONS_KEPT)
        self._statistics: dict[str, Any] | None = None
        self._locks: dict[str, tuple[str, float]] = {}

    # -- internal bookkeeping (lock held) ------------------------------------

    def _transition(self, cid: str, old: str | None, new: str, activity_us: int) -> None:
        if old != new:
            if old is not None:
                self._counts[old] -= 1
            self._counts[new] += 1
        if new == ENDED:
            self._live.remove(cid)
            if old != ENDED:
                self._archive[cid] = now_us()
        else:
            self._live.set(cid, activity_us)
        self._recency.set(cid, activity_us)

    def _forget(self, cid: str) -> dict[str, str] | None:
        record = self._records.pop(cid, None)
        if record is not None:
            self._counts[_status(record)] -= 1
        self._live.remove(cid)
        self._recency.remove(cid)
        self._archive.pop(cid, None)
        return record

    def _make_room_for(self, cid: str) -> None:
        while cid not in self._records and len(self._records) >= self.max_sessions:
            victim = self._recency.oldest()
            if victim is None:
                return
            self._forget(victim[0])
            self.evictions += 1
            log.warning(
                "memory storage full (%d): evicted session %s", self.max_sessions, victim[0]
            )

    def _end_locked(self, cid: str, record: dict[str, str], reason: str, now: int) -> None:
        old = _status(record)
        record["status"] = json.dumps(ENDED)
        record["end_reason"] = json.dumps(reason)
        record["ended_at"] = json.dumps(from_us(now).isoformat())
        record["seq"] = str(int(record["seq"]) + 1)
        self._transition(cid, old, ENDED, int(record[ACTIVITY_FIELD]))

    # -- operations ----------------------------------------------------------

    def create(self, state: SessionState, replace: bool = False, max_live: int = 0) -> CreateResult:
        """Store a new session unless a live or unarchived one is in the way, or it is full."""
        cid = state.conversation_id
        fields = encode_state(state)
        with self._lock:
            epoch = 1
            current = self._records.get(cid)
            if current is None and 0 < max_live <= len(self._live):
                return CreateResult(False, full=True)
            if current is not None:
                status, archived = _status(current), ARCHIVED_FIELD in current
                if not replace and (status != ENDED or not archived):
                    return CreateResult(False, existing_status=status, archived=archived)
                epoch = int(current["epoch"]) + 1
                self._forget(cid)
            self._make_room_for(cid)
            fields.update(epoch=str(epoch), seq="0")
            self._records[cid] = fields
            self._transition(cid, None, state.status.value, int(fields[ACTIVITY_FIELD]))
        return CreateResult(True, epoch=epoch)

    def save(self, snap: Snapshot) -> bool:
        """Compare-and-set by `(epoch, seq)` (ENDED is never undone); True if applied."""
        return self.save_outcome(snap) is SaveOutcome.APPLIED

    def save_outcome(self, snap: Snapshot) -> SaveOutcome:
        """Like the save script: applied, or fenced (its new history entries still merged)."""
        cid = snap.conversation_id
        with self._lock:
            current = self._records.get(cid)
            if current is not None and _fenced(current, snap):
                return self._merge_fenced(cid, current, snap)
            activity = snap.last_activity_us
            old: str | None = None
            fields = dict(snap.fields)
            if current is not None:
                old = _status(current)
                activity = max(activity, int(current[ACTIVITY_FIELD]))
                for name in HISTORY_FIELDS:
                    if name in fields and name in current:
                        fields[name] = merge(fields[name], current[name])[0]
            else:
                self._make_room_for(cid)
            record = dict(current or {})
            record.update(fields)
            record.update(
                epoch=str(snap.epoch),
                seq=str(snap.seq),
                status=json.dumps(snap.status.value),
                last_activity=str(activity),
            )
            self._records[cid] = record
            self._transition(cid, old, snap.status.value, activity)
        return SaveOutcome.APPLIED

    def _merge_fenced(self, cid: str, record: dict[str, str], snap: Snapshot) -> SaveOutcome:
        """A fenced snapshot adds only the history entries the record lacks (lock held)."""
        added = 0
        for name in HISTORY_FIELDS:
            if name in snap.fields and name in record:
                record[name], count = merge(record[name], snap.fields[name])
                added += count
        if not added:
            return SaveOutcome.STALE
        if ARCHIVED_FIELD not in record:
            return SaveOutcome.MERGED
        del record[ARCHIVED_FIELD]
        self._archive[cid] = now_us()
        return SaveOutcome.REOPENED

    def save_many(self, snapshots: Sequence[Snapshot]) -> SaveResult:
        """Apply a batch of snapshots."""
        result = count_saves(snapshots, [self.save_outcome(s) for s in snapshots])
        self.add_event("snapshots_applied", result.applied)
        self.add_event("snapshots_stale", result.stale)
        self.add_event("snapshots_stale_merged", result.merged)
        return result

    def load(self, conversation_id: str, touch: bool = False) -> SessionState | None:
        """Read a copy; with `touch`, move activity to now unless expired or ended."""
        with self._lock:
            record = self._records.get(conversation_id)
            if record is None:
                return None
            if touch and _status(record) != ENDED:
                now, activity = now_us(), int(record[ACTIVITY_FIELD])
                if activity < now <= activity + int(self.session_ttl_s * 1_000_000):
                    record[ACTIVITY_FIELD] = str(now)
                    self._live.set(conversation_id, now)
                    self._recency.set(conversation_id, now)
            fields = dict(record)
        return decode_state(conversation_id, fields)

    def claim(
        self, conversation_id: str, max_age_s: float, holder: str | None = None
    ) -> ClaimResult:
        """Atomic resume claim: epoch + 1, seq 0, resumed_count + 1, ACTIVE, the holder."""
        with self._lock:
            record = self._records.get(conversation_id)
            if record is None:
                return ClaimResult(ClaimOutcome.MISSING)
            old = _status(record)
            if old in (ENDED, "error"):
                return ClaimResult(ClaimOutcome(old))
            now, activity = now_us(), int(record[ACTIVITY_FIELD])
            if now - activity > max_age_s * 1_000_000:
                return ClaimResult(ClaimOutcome.EXPIRED)
            activity = max(now, activity)
            record.update(
                epoch=str(int(record["epoch"]) + 1),
                seq="0",
                resumed_count=str(int(record["resumed_count"]) + 1),
                status=json.dumps("active"),
                last_activity=str(activity),
            )
            if holder:
                record["session_id"] = json.dumps(holder)
            self._transition(conversation_id, old, "active", activity)
            self._events["resumes"] += 1
            fields = dict(record)
        return ClaimResult(ClaimOutcome.OK, decode_state(conversation_id, fields))

    def end(
        self, conversation_id: str, reason: str, expected_epoch: int | None = None
    ) -> EndOutcome:
        """Atomically end a session (of `expected_epoch`, if given) and queue its archive."""
        with self._lock:
            record = self._records.get(conversation_id)
            if record is None:
                return EndOutcome.MISSING
            if _status(record) == ENDED:
                return EndOutcome.ALREADY
            if expected_epoch is not None and int(record["epoch"]) != expected_epoch:
                return EndOutcome.MOVED
            self._end_locked(conversation_id, record, reason, now_us())
        return EndOutcome.ENDED

    def update_fields(
        self, conversation_id: str, fields: Mapping[str, str], status: str | None = None
    ) -> UpdateOutcome:
        """Set encoded fields (and status), advancing `seq`; refused once ENDED."""
        with self._lock:
            record = self._records.get(conversation_id)
            if record is None:
                return UpdateOutcome.MISSING
            old = _status(record)
            if old == ENDED:
                return UpdateOutcome.ENDED
            record.update(fields)
            activity = max(now_us(), int(record[ACTIVITY_FIELD]))
            new = status or old
            record.update(
                status=json.dumps(new), last_activity=str(activity), seq=str(int(record["seq"]) + 1)
            )
            self._transition(conversation_id, old, new, activity)
        return UpdateOutcome.OK

    def expire_batch(self, max_age_s: float, limit: int) -> ExpireResult:
        """End up to `limit` live sessions idle past `max_age_s`."""
        now = now_us()
        with self._lock:
            ids = self._live.pop_older_than(now - int(max_age_s * 1_000_000), limit)
            for cid in ids:
                self._end_locked(cid, self._records[cid], EXPIRED_REASON, now)
        return ExpireResult(ended=ids)

    def delete(self, conversation_id: str) -> bool:
        """Remove a session; True if it existed."""
        with self._lock:
            return self._forget(conversation_id) is not None

    def load_record(self, conversation_id: str) -> StoredSession | None:
        """A stored session and its archived flag."""
        with self._lock:
            record = self._records.get(conversation_id)
            fields = None if record is None else dict(record)
        if fields is None:
            return None
        return StoredSession(decode_state(conversation_id, fields), ARCHIVED_FIELD in fields)

    def mark_archived(
        self,
        conversation_id: str,
        duration_s: float = 0.0,
        counters: Mapping[str, int] | None = None,
    ) -> ArchiveMark:
        """Flag an ended session as archived, count it, keep its duration, add `counters` once."""
        with self._lock:
            record = self._records.get(conversation_id)
            if record is None or _status(record) != ENDED:
                return ArchiveMark.NOT_ENDED
            self._archive.pop(conversation_id, None)
            if ARCHIVED_FIELD in record:
                return ArchiveMark.ALREADY
            record[ARCHIVED_FIELD] = "1"
            if COUNTED_FIELD in record:
                return ArchiveMark.MARKED  # archived again after late history: counted once
            record[COUNTED_FIELD] = "1"
            self._events["archived"] += 1
            self._durations.appendleft(duration_s)
            for name, amount in (counters or {}).items():
                self._events[name] += int(amount)
        return ArchiveMark.MARKED

    def archive_overdue(self, older_than_s: float, limit: int) -> list[str]:
        """Ended sessions still unarchived `older_than_s` after they ended."""
        cutoff = now_us() - int(older_than_s * 1_000_000)
        with self._lock:
            due = [cid for cid, ended_us in self._archive.items() if ended_us <= cutoff]
        return due[:limit]

    def add_event(self, name: str, amount: int = 1) -> None:
        """Add to an event counter."""
        if amount:
            with self._lock:
                self._events[name] += amount

    def mark_time(self, name: str) -> None:
        """Record now (µs) under an event name."""
        with self._lock:
            self._events[name] = now_us()

    def events(self) -> dict[str, int]:
        """All event counters."""
        with self._lock:
            return dict(self._events)

    def live_count(self) -> int:
        """Live sessions."""
        return len(self._live)

    def archive_backlog(self) -> int:
        """Ended sessions waiting for their archive."""
        return len(self._archive)

    def recent_durations(self) -> list[float]:
        """Durations (s) of the most recently archived calls."""
        with self._lock:
            return list(self._durations)

    def write_statistics(self, document: Mapping[str, Any]) -> None:
        """Keep the statistics document (a JSON round trip, so it is a copy)."""
        self._statistics = json.loads(json.dumps(document))

    def read_statistics(self) -> dict[str, Any] | None:
        """The last statistics document, if any."""
        return None if self._statistics is None else json.loads(json.dumps(self._statistics))

    def acquire_lock(self, name: str, ttl_s: float) -> str | None:
        """A token if the caller now holds the named lock."""
        with self._lock:
            now = time.monotonic()
            held = self._locks.get(name)
            if held is not None and held[1] > now:
                return None
            token = secrets.token_hex(8)
            self._locks[name] = (token, now + ttl_s)
            return token

    def release_lock(self, name: str, token: str) -> None:
        """Release the named lock if `token` holds it."""
        with self._lock:
            held = self._locks.get(name)
            if held is not None and held[0] == token:
                del self._locks[name]

    def list_live(self) -> list[str]:
        """Live ids, least recently active first."""
        with self._lock:
            return list(self._live)

    def archive_pending(self, limit: int) -> list[str]:
        """Ended ids waiting for their archive, oldest end first."""
        with self._lock:
            return list(self._archive)[:limit]

    def status_counts(self) -> dict[str, int]:
        """Sessions per status."""
        with self._lock:
            return {k: v for k, v in self._counts.items() if v}

    def sizes(self) -> dict[str, int]:
        """Stored, live and archive-pending counts, and evictions so far."""
        with self._lock:
            return {
                "stored": len(self._records),
                "live": len(self._live),
                "archive_backlog": len(self._archive),
                "evictions": self.evictions,
            }
