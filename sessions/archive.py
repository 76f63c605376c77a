"""The archive: one complete record per finished call, written to a sink idempotently."""

from __future__ import annotations

import json
import logging
import os
import tempfile
import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Protocol

from pydantic import BaseModel, ConfigDict

from sessions.clock import utc_now
from sessions.errors import RetryableError, TerminalError
from sessions.state import SessionState, SessionStatus
from sessions.usage import ModelInfo, ModelUsage

log = logging.getLogger(__name__)


class ArchiveUnavailable(RetryableError):
    """The archive sink could not be written; the archive will be retried."""


class NotArchivable(TerminalError):
    """The session is not ended, so it has no final record to archive."""


# State fields the record carries at its top level (under these names), so `state` holds
# only the rest: nothing is stored twice. The audio buffer is not archived.
PROMOTED: dict[str, str] = {
    "conversation_id": "conversation_id",
    "session_id": "session_id",
    "bridge_type": "bridge_type",
    "bot_name": "bot_name",
    "caller": "caller",
    "status": "status",
    "created_at": "started_at",
    "ended_at": "ended_at",
    "resumed_count": "resumed_count",
    "end_reason": "end_reason",
    "conversation_history": "transcript",
    "function_calls": "function_calls",
    "error_count": "error_count",
    "last_error": "last_error",
    "realtime": "realtime",
    "usage": "usage",
}
NOT_ARCHIVED = frozenset({"audio_buffer"})


class ArchiveRecord(BaseModel):
    """Everything kept about a finished call: the call at the top level, the rest of its
    session state (model ids, metadata, ordering) in `state`."""

    model_config = ConfigDict(frozen=True)

    conversation_id: str
    session_id: str | None
    bridge_type: str
    bot_name: str
    caller: str
    status: SessionStatus
    started_at: datetime
    ended_at: datetime
    duration_s: float
    resumed_count: int
    end_reason: str | None
    transcript: list[dict[str, Any]]
    function_calls: list[dict[str, Any]]
    error_count: int
    last_error: str | None
    realtime: ModelInfo | None = None
    usage: ModelUsage = ModelUsage()
    state: dict[str, Any]
    archived_at: datetime

    @classmethod
    def of(cls, state: SessionState) -> ArchiveRecord:
        """The record of an ENDED session; NotArchivable otherwise."""
        if state.status is not SessionStatus.ENDED or state.ended_at is None:
            raise NotArchivable(f"session {state.conversation_id!r} is {state.status.value}")
        rest = {k: v for k, v in state.to_dict().items()
                if k not in PROMOTED and k not in NOT_ARCHIVED}  # fmt: skip
        return cls(
            conversation_id=state.conversation_id,
            session_id=state.session_id,
            bridge_type=state.bridge_type,
            bot_name=state.bot_name,
            caller=state.caller,
            status=state.status,
            started_at=state.created_at,
            ended_at=state.ended_at,
            duration_s=max(0.0, (state.ended_at - state.created_at).total_seconds()),
            resumed_count=state.resumed_count,
            end_reason=state.end_reason,
            transcript=state.conversation_history,
            function_calls=state.function_calls,
            error_count=state.error_count,
            last_error=state.last_error,
            realtime=state.realtime,
            usage=state.usage,
            state=rest,
            archived_at=utc_now(),
        )

    def session_state(self) -> SessionState:
        """The call's session state as it ended (without its audio buffer)."""
        top = self.model_dump(mode="json")
        return SessionState.from_dict({**self.state, **{k: top[v] for k, v in PROMOTED.items()}})


class ArchiveSink(Protocol):
    """Where records go; `write` is an upsert by conversation id."""

    def write(self, record: ArchiveRecord) -> None: ...
    def read(self, conversation_id: str) -> ArchiveRecord | None: ...
    def iter_since(
        self, since: datetime, until: datetime | None = None
    ) -> Iterator[ArchiveRecord]: ...
    def count_since(self, since: datetime, until: datetime | None = None) -> int: ...
    def check(self, timeout_s: float = 2.0) -> str: ...
    def describe(self) -> str: ...
    def close(self) -> None: ...


class FileSystemSink:
    """One JSON document per call under ARCHIVE_DIR/YYYY/MM/DD/, replaced atomically."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)

    def path_for(self, conversation_id: str, ended_at: datetime) -> Path:
        """Where a call's record lives (the id is already validated as path-safe)."""
        return self.root / ended_at.strftime("%Y/%m/%d") / f"{conversation_id}.json"

    def write(self, record: ArchiveRecord) -> None:
        target = self.path_for(record.conversation_id, record.ended_at)
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=".tmp-", suffix=".json")
            with os.fdopen(fd, "w", encoding="utf-8") as out:
                out.write(record.model_dump_json(indent=2))
                out.flush()
                os.fsync(out.fileno())
            os.replace(tmp, target)
        except OSError as exc:
            raise ArchiveUnavailable(f"cannot write {target}: {exc}") from exc

    def read(self, conversation_id: str) -> ArchiveRecord | None:
        for path in self.root.glob(f"*/*/*/{conversation_id}.json"):
            return ArchiveRecord.model_validate_json(path.read_text(encoding="utf-8"))
        return None

    def iter_since(self, since: datetime, until: datetime | None = None) -> Iterator[ArchiveRecord]:
        """Records ended at or after `since` (and before `until`), oldest first."""
        for day_dir, _ in self._days(since, until):
            records = (_load(path) for path in _record_files(day_dir))
            in_range = (r for r in records if ended_within(r, since, until))
            yield from sorted(in_range, key=lambda r: (r.ended_at, r.conversation_id))

    def count_since(self, since: datetime, until: datetime | None = None) -> int:
        """How many records `iter_since` yields; days wholly inside the range are not parsed."""
        total = 0
        for day_dir, whole in self._days(since, until):
            files = _record_files(day_dir)
            if whole:
                total += len(files)
            else:
                total += sum(1 for path in files if ended_within(_load(path), since, until))
        return total

    def check(self, timeout_s: float = 2.0) -> str:
        """Create and remove a probe file under the root; ArchiveUnavailable if that fails."""
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            fd, probe = tempfile.mkstemp(dir=self.root, prefix=".probe-")
            os.close(fd)
            os.unlink(probe)
        except OSError as exc:
            raise ArchiveUnavailable(f"cannot write under {self.root}: {exc}") from exc
        return f"{self.root} is writable"

    def _days(self, since: datetime, until: datetime | None) -> Iterator[tuple[Path, bool]]:
        """Day directories that may hold records in range, and whether all of the day is in it."""
        for day_dir in sorted(self.root.glob("[0-9]*/[0-9]*/[0-9]*")):
            try:
                start = datetime.strptime("/".join(day_dir.parts[-3:]), "%Y/%m/%d")
            except ValueError:
                continue
            start = start.replace(tzinfo=UTC)
            end = start + timedelta(days=1)
            if end <= since or (until is not None and start >= until):
                continue
            yield day_dir, since <= start and (until is None or end <= until)

    def describe(self) -> str:
        return f"filesystem:{self.root}"

    def close(self) -> None:
        return None


class PostgresSink:
    """A table of records keyed by conversation id, created on first use; writes are upserts."""

    def __init__(self, url: str, table: str = "session_archive", read_only: bool = False) -> None:
        self.url = url
        self.table = table
        self.read_only = read_only  # for readers: creates nothing, and the server refuses writes
        self._conn: Any = None
        self._lock = threading.Lock()

    def _connection(self) -> Any:
        import psycopg

        if self._conn is None or self._conn.closed:
            self._conn = psycopg.connect(self.url, autocommit=True, connect_timeout=5)
            if self.read_only:
                self._conn.execute("SET default_transaction_read_only = on")
            else:
                self._conn.execute(_CREATE.format(table=self.table))
        return self._conn

    def _execute(self, sql: str, params: tuple[Any, ...]) -> list[tuple[Any, ...]]:
        import psycopg

        with self._lock:
            try:
                cur = self._connection().execute(sql.format(table=self.table), params)
                return cur.fetchall() if cur.description else []
            except psycopg.OperationalError as exc:
                self._conn = None
                raise ArchiveUnavailable(f"archive database unavailable: {exc}") from exc

    def write(self, record: ArchiveRecord) -> None:
        self._execute(
            _UPSERT,
            (
                record.conversation_id,
                record.started_at,
                record.ended_at,
                record.duration_s,
                record.end_reason,
                record.resumed_count,
                record.model_dump_json(),
            ),
        )

    def read(self, conversation_id: str) -> ArchiveRecord | None:
        rows = self._execute(
            "SELECT record FROM {table} WHERE conversation_id = %s", (conversation_id,)
        )
        return ArchiveRecord.model_validate(rows[0][0]) if rows else None

    def write_count(self, conversation_id: str) -> int:
        """How many times a record was written (1 after an archive, however often repeated)."""
        rows = self._execute(
            "SELECT write_count FROM {table} WHERE conversation_id = %s", (conversation_id,)
        )
        return int(rows[0][0]) if rows else 0

    def iter_since(self, since: datetime, until: datetime | None = None) -> Iterator[ArchiveRecord]:
        """Records ended at or after `since` (and before `until`), oldest first, in pages."""
        sql = _PAGE.replace("{until}", _UNTIL if until else "")
        bounds = (since, until) if until else (since,)
        after: tuple[Any, ...] = (since, "")
        while True:
            rows = self._execute(sql, (*after, *bounds, READ_PAGE_SIZE))
            for _, _, doc in rows:
                yield ArchiveRecord.model_validate(doc)
            if len(rows) < READ_PAGE_SIZE:
                return
            after = (rows[-1][0], rows[-1][1])

    def count_since(self, since: datetime, until: datetime | None = None) -> int:
        """How many records `iter_since` yields."""
        sql = "SELECT count(*) FROM {table} WHERE ended_at >= %s" + (_UNTIL if until else "")
        rows = self._execute(sql, (since, until) if until else (since,))
        return int(rows[0][0])

    def check(self, timeout_s: float = 2.0) -> str:
        """Connect, create the table if needed and read it; ArchiveUnavailable if that fails."""
        import psycopg

        timeout_ms = int(timeout_s * 1000)
        try:
            with psycopg.connect(
                self.url,
                autocommit=True,
                connect_timeout=max(1, round(timeout_s)),
                options=f"-c statement_timeout={timeout_ms} -c lock_timeout={timeout_ms}",
            ) as conn:
                conn.execute(_CREATE.format(table=self.table))
                conn.execute(f"SELECT 1 FROM {self.table} LIMIT 1").fetchall()
        except psycopg.Error as exc:
            raise ArchiveUnavailable(f"archive database unavailable: {exc}".strip()) from exc
        return f"table {self.table} can be created and read"

    def describe(self) -> str:
        from sessions.redis_ops import redact_url

        return f"postgresql:{redact_url(self.url)} table {self.table}"

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None


_CREATE = """
CREATE TABLE IF NOT EXISTS {table} (
    conversation_id text PRIMARY KEY,
    started_at timestamptz NOT NULL,
    ended_at timestamptz NOT NULL,
    duration_s double precision NOT NULL,
    end_reason text,
    resumed_count integer NOT NULL,
    record jsonb NOT NULL,
    write_count integer NOT NULL DEFAULT 1,
    archived_at timestamptz NOT NULL DEFAULT now()
)
"""

_UPSERT = """
INSERT INTO {table}
    (conversation_id, started_at, ended_at, duration_s, end_reason, resumed_count, record)
VALUES (%s, %s, %s, %s, %s, %s, %s::jsonb)
ON CONFLICT (conversation_id) DO UPDATE SET
    record = EXCLUDED.record,
    ended_at = EXCLUDED.ended_at,
    duration_s = EXCLUDED.duration_s,
    end_reason = EXCLUDED.end_reason,
    resumed_count = EXCLUDED.resumed_count,
    write_count = {table}.write_count + 1,
    archived_at = now()
"""


READ_PAGE_SIZE = 500
_UNTIL = " AND ended_at < %s"
_PAGE = """
SELECT ended_at, conversation_id, record FROM {table}
WHERE (ended_at, conversation_id) > (%s, %s) AND ended_at >= %s{until}
ORDER BY ended_at, conversation_id LIMIT %s
"""


def ended_within(record: ArchiveRecord, since: datetime, until: datetime | None) -> bool:
    """Whether a record ended at or after `since` and before `until` (if given)."""
    return record.ended_at >= since and (until is None or record.ended_at < until)


def _record_files(day_dir: Path) -> list[Path]:
    """The records of one day directory (not the temporary files of writes in progress)."""
    return sorted(p for p in day_dir.glob("*.json") if not p.name.startswith("."))


def _load(path: Path) -> ArchiveRecord:
    return ArchiveRecord.model_validate_json(path.read_text(encoding="utf-8"))


def json_line(record: ArchiveRecord) -> str:
    """A record as one line of JSON."""
    return json.dumps(record.model_dump(mode="json"), separators=(",", ":"))
