"""The storage interface: the specification's async methods over a small set of atomic operations.

Every backend provides the atomic operations (create, compare-and-set save,
load, claim, end, update, expire); the specification's methods are written
once here in terms of them.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from enum import IntEnum, StrEnum
from typing import Any, Protocol

from sessions.codec import Snapshot
from sessions.errors import InvalidSessionData
from sessions.state import SessionState

EXPIRE_BATCH_SIZE = 500
EXPIRED_REASON = "expired"


class ClaimOutcome(StrEnum):
    """What a resume claim found."""

    OK = "ok"
    MISSING = "missing"
    ENDED = "ended"
    ERROR = "error"
    EXPIRED = "expired"


class EndOutcome(StrEnum):
    """What ending a session did."""

    ENDED = "ended"
    ALREADY = "already"
    MISSING = "missing"
    MOVED = "moved"  # resumed since the epoch the end was meant for


class UpdateOutcome(StrEnum):
    """What a field update did."""

    OK = "ok"
    MISSING = "missing"
    ENDED = "ended"


@dataclass(frozen=True)
class ClaimResult:
    """A claim's outcome and, when it succeeded, the claimed state (new epoch)."""

    outcome: ClaimOutcome
    state: SessionState | None = None


@dataclass(frozen=True)
class CreateResult:
    """Whether a session was created; `existing_status` when one was in the way."""

    created: bool
    epoch: int = 1
    existing_status: str | None = None
    archived: bool = False
    full: bool = False


@dataclass(frozen=True)
class ExpireResult:
    """One bounded expiry batch: ids ended as expired, stale index entries removed."""

    ended: list[str] = field(default_factory=list)
    vanished: int = 0


@dataclass(frozen=True)
class StoredSession:
    """A stored state and whether its archive has been written."""

    state: SessionState
    archived: bool


class ArchiveMark(StrEnum):
    """What flagging a session as archived did."""

    MARKED = "marked"
    ALREADY = "already"
    NOT_ENDED = "not_ended"


ARCHIVE_MARKS = {0: ArchiveMark.NOT_ENDED, 1: ArchiveMark.MARKED, 2: ArchiveMark.ALREADY}


class SaveOutcome(IntEnum):
    """What one compare-and-set save did (the save scripts' reply)."""

    STALE = 0  # fenced (older, or the session ended or archived), nothing new in it
    APPLIED = 1
    MERGED = 2  # fenced, but its history added entries the store lacked
    REOPENED = 3  # the same into an archived call: it must be archived again


@dataclass(frozen=True)
class SaveAck:
    """A save, and how many replicas acknowledged it (None: not asked, or not replicated)."""

    applied: bool
    replicated: int | None


@dataclass(frozen=True)
class SaveResult:
    """How a batch's snapshots fared: applied, stale (fenced; `merged` of them added
    history), and the archived calls that late history reopened."""

    applied: int
    stale: int
    merged: int = 0
    reopened: tuple[str, ...] = ()


class SessionStorage(ABC):
    """Async session storage used by the service and the bridges."""

    # -- atomic operations every backend provides ------------------------------

    @abstractmethod
    async def create(
        self, state: SessionState, replace: bool = False, max_live: int = 0
    ) -> CreateResult:
        """Store a new session; refuse if a live (or unarchived) one exists unless `replace`,
        or if a new id would make more than `max_live` live sessions (0: no limit)."""

    @abstractmethod
    async def save(self, snapshot: Snapshot) -> bool:
        """Compare-and-set: apply if `(epoch, seq)` is newer and ENDED is not undone."""

    @abstractmethod
    async def load(self, conversation_id: str, touch: bool = False) -> SessionState | None:
        """Read a session; with `touch`, move its last activity to now (unless expired)."""

    @abstractmethod
    async def claim(
        self, conversation_id: str, max_age_s: float, holder: str | None = None
    ) -> ClaimResult:
        """Atomically take over a resumable session: epoch + 1, resumed_count + 1, ACTIVE,
        and `holder` (the claiming bridge instance, if given) as its `session_id`."""

    @abstractmethod
    async def end(
        self, conversation_id: str, reason: str, expected_epoch: int | None = None
    ) -> EndOutcome:
        """Atomically mark ENDED with a reason and end time and queue it for archiving; with
        `expected_epoch`, only if it was not resumed since (MOVED otherwise)."""

    @abstractmethod
    async def update_fields(
        self, conversation_id: str, fields: Mapping[str, str], status: str | None = None
    ) -> UpdateOutcome:
        """Atomically set encoded fields (and status), advancing `seq`; refused once ENDED."""

    @abstractmethod
    async def expire_batch(self, max_age_s: float, limit: int) -> ExpireResult:
        """End up to `limit` live sessions idle for more than `max_age_s`."""

    @abstractmethod
    async def mark_archived(
        self,
        conversation_id: str,
        duration_s: float = 0.0,
        counters: Mapping[str, int] | None = None,
    ) -> ArchiveMark:
        """Flag an ended session as archived (counted, `counters` added once); it may then go."""

    @abstractmethod
    async def read_statistics(self) -> dict[str, Any] | None:
        """The statistics document last written by the statistics task, if any."""

    @abstractmethod
    async def delete_session(self, conversation_id: str) -> bool:
        """Remove a session and its index entries; True if it existed."""

    @abstractmethod
    async def list_active_sessions(self) -> list[str]:
        """Ids of live (not ended) sessions, least recently active first."""

    @abstractmethod
    async def live_count(self) -> int:
        """Number of live (not ended) sessions."""

    @abstractmethod
    async def status_counts(self) -> dict[str, int]:
        """Number of stored sessions in each status."""

    @abstractmethod
    async def get_stats(self) -> dict[str, Any]:
        """Backend description and counts; never contains credentials."""

    @abstractmethod
    async def events(self) -> dict[str, int]:
        """The monotonic event counters (resumes, stale snapshots, archives, ...)."""

    async def save_durable(
        self, snapshot: Snapshot, replicas: int = 0, timeout_ms: int = 500
    ) -> SaveAck:
        """Save, then (where the backend replicates) wait until `replicas` replicas have it."""
        return SaveAck(await self.save(snapshot), None)

    async def start(self) -> None:
        """Start background work (if the backend has any)."""

    async def close(self) -> None:
        """Stop background work and release connections."""

    # -- the specification's methods, written once --------------------------

    async def store_session(self, conversation_id: str, session_data: Mapping[str, Any]) -> bool:
        """Save a `to_dict()`-shaped session; False when an equal or newer one is stored."""
        snapshot = Snapshot.from_dict(session_data)
        if snapshot.conversation_id != conversation_id:
            raise InvalidSessionData(
                f"conversation_id: {snapshot.conversation_id!r} does not match {conversation_id!r}"
            )
        return await self.save(snapshot)

    async def retrieve_session(
        self, conversation_id: str, update_activity: bool = True
    ) -> dict[str, Any] | None:
        """The stored session as a `to_dict()`-shaped dict, or None."""
        state = await self.load(conversation_id, touch=update_activity)
        return None if state is None else state.to_dict()

    async def update_session_activity(self, conversation_id: str) -> bool:
        """Move last activity to now; False if there is no such live session."""
        return await self.load(conversation_id, touch=True) is not None

    async def cleanup_expired_sessions(self, max_age_seconds: float = 3600) -> int:
        """End every live session idle past `max_age_seconds` (in bounded batches)."""
        total = 0
        while True:
            result = await self.expire_batch(max_age_seconds, EXPIRE_BATCH_SIZE)
            total += len(result.ended)
            if len(result.ended) + result.vanished < EXPIRE_BATCH_SIZE:
                return total


def count_saves(snapshots: Sequence[Snapshot], outcomes: Sequence[int]) -> SaveResult:
    """Tally the compare-and-set outcomes of `snapshots` (in order)."""
    kinds = [SaveOutcome(int(o)) for o in outcomes]
    applied = kinds.count(SaveOutcome.APPLIED)
    reopened = tuple(s.conversation_id for s, k in zip(snapshots, kinds, strict=True)
                     if k is SaveOutcome.REOPENED)  # fmt: skip
    merged = kinds.count(SaveOutcome.MERGED) + len(reopened)
    return SaveResult(applied=applied, stale=len(kinds) - applied, merged=merged,
                      reopened=reopened)  # fmt: skip


class SyncSessionStore(Protocol):
    """The blocking operations the task code uses (Redis for workers, memory when embedded)."""

    def save(self, snapshot: Snapshot) -> bool: ...
    def save_many(self, snapshots: Sequence[Snapshot]) -> SaveResult: ...
    def load_record(self, conversation_id: str) -> StoredSession | None: ...
    def end(
        self, conversation_id: str, reason: str, expected_epoch: int | None = None
    ) -> EndOutcome: ...
    def expire_batch(self, max_age_s: float, limit: int) -> ExpireResult: ...
    def archive_overdue(self, older_than_s: float, limit: int) -> list[str]: ...
    def mark_archived(
        self, conversation_id: str, duration_s: float, counters: Mapping[str, int] | None = None
    ) -> ArchiveMark: ...
    def add_event(self, name: str, amount: int = 1) -> None: ...
    def mark_time(self, name: str) -> None: ...
    def events(self) -> dict[str, int]: ...
    def status_counts(self) -> dict[str, int]: ...
    def live_count(self) -> int: ...
    def archive_backlog(self) -> int: ...
    def recent_durations(self) -> list[float]: ...
    def write_statistics(self, document: Mapping[str, Any]) -> None: ...
    def read_statistics(self) -> dict[str, Any] | None: ...
    def acquire_lock(self, name: str, ttl_s: float) -> str | None: ...
    def release_lock(self, name: str, token: str) -> None: ...
