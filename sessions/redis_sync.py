"""`SyncRedisStore`: the synchronous shell over `RedisOps`, used by Celery tasks."""

from __future__ import annotations

import json
import secrets
from collections.abc import Mapping, Sequence
from typing import Any

from redis import BlockingConnectionPool, Redis
from redis.exceptions import RedisError

from sessions.codec import Snapshot
from sessions.keys import KeySpace
from sessions.redis_ops import END_OUTCOMES, RedisOps, Retention, ScriptCall, translate_error
from sessions.redis_scripts import ALL as SCRIPTS
from sessions.storage import (
    ARCHIVE_MARKS,
    ArchiveMark,
    EndOutcome,
    ExpireResult,
    SaveOutcome,
    SaveResult,
    StoredSession,
    count_saves,
)

SAVE_CHUNK = 100  # snapshots a script call: bounds how long one call holds Redis (~2 ms)


class SyncRedisStore:
    """Blocking access to the same sessions, scripts and indexes as `RedisSessionStorage`."""

    def __init__(
        self,
        redis_url: str,
        session_prefix: str,
        retention: Retention,
        max_connections: int = 10,
        pool_timeout_s: float = 5.0,
        **redis_kwargs: Any,
    ) -> None:
        self.redis_url = redis_url
        self.ops = RedisOps(KeySpace(session_prefix), retention)
        redis_kwargs.setdefault("decode_responses", True)
        self._pool = BlockingConnectionPool.from_url(
            redis_url, max_connections=max_connections, timeout=pool_timeout_s, **redis_kwargs
        )
        self.client = Redis(connection_pool=self._pool)
        self._scripts = {name: self.client.register_script(src) for name, src in SCRIPTS.items()}

    @property
    def keys(self) -> KeySpace:
        """The key layout in use."""
        return self.ops.keys

    def _run(self, call: ScriptCall, conversation_id: str | None = None) -> Any:
        try:
            return self._scripts[call.script](keys=call.keys, args=call.args)
        except RedisError as exc:
            raise translate_error(exc, self.redis_url, conversation_id) from exc

    def _do(self, command: str, *args: Any) -> Any:
        try:
            return self.client.execute_command(command, *args)  # type: ignore[no-untyped-call]
        except RedisError as exc:
            raise translate_error(exc, self.redis_url, None) from exc

    def save(self, snapshot: Snapshot) -> bool:
        """Compare-and-set save of one snapshot (fenced history still merges); True if applied."""
        reply = self._run(self.ops.save(snapshot), snapshot.conversation_id)
        return SaveOutcome(int(reply)) is SaveOutcome.APPLIED

    def save_many(self, snapshots: Sequence[Snapshot]) -> SaveResult:
        """Apply a batch with the compare-and-set script, SAVE_CHUNK snapshots a call."""
        if not snapshots:
            return SaveResult(applied=0, stale=0)
        script = self._scripts["save_many"]
        try:
            with self.client.pipeline(transaction=False) as pipe:
                for start in range(0, len(snapshots), SAVE_CHUNK):
                    call = self.ops.save_many(snapshots[start : start + SAVE_CHUNK])
                    script(keys=call.keys, args=call.args, client=pipe)
                replies = pipe.execute()
        except RedisError as exc:
            raise translate_error(exc, self.redis_url, None) from exc
        result = count_saves(snapshots, [int(r) for reply in replies for r in reply])
        self.add_event("snapshots_applied", result.applied)
        self.add_event("snapshots_stale", result.stale)
        self.add_event("snapshots_stale_merged", result.merged)
        return result

    def load_record(self, conversation_id: str) -> StoredSession | None:
        """A stored session and its archived flag, without touching activity."""
        fields = self._do("HGETALL", self.ops.keys.session(conversation_id))
        state = self.ops.parse_state(conversation_id, fields)
        if state is None:
            return None
        return StoredSession(state=state, archived=self.ops.is_archived(fields))

    def end(
        self, conversation_id: str, reason: str, expected_epoch: int | None = None
    ) -> EndOutcome:
        """Atomically end a session (of `expected_epoch`, if given)."""
        call = self.ops.end(conversation_id, reason, expected_epoch)
        return END_OUTCOMES[self._run(call, conversation_id)]

    def expire_batch(self, max_age_s: float, limit: int) -> ExpireResult:
        """End up to `limit` sessions idle past `max_age_s`."""
        return self.ops.parse_expire(self._run(self.ops.expire_batch(max_age_s, limit)))

    def archive_overdue(self, older_than_s: float, limit: int) -> list[str]:
        """Ended sessions still unarchived `older_than_s` after they ended, oldest first."""
        cutoff_us = self.ops.now_us() - int(older_than_s * 1_000_000)
        index = self.ops.keys.archive_index
        return list(self._do("ZRANGEBYSCORE", index, "-inf", cutoff_us, "LIMIT", 0, limit))

    def mark_archived(
        self, conversation_id: str, duration_s: float, counters: Mapping[str, int] | None = None
    ) -> ArchiveMark:
        """Flag an ended session as archived (idempotent; `counters` are added once)."""
        call = self.ops.mark_archived(conversation_id, duration_s, counters)
        return ARCHIVE_MARKS[int(self._run(call, conversation_id))]

    def add_event(self, name: str, amount: int = 1) -> None:
        """Add to a monotonic event counter."""
        if amount:
            self._do("HINCRBY", self.ops.keys.events, name, amount)

    def mark_time(self, name: str) -> None:
        """Record now (µs) under an event name, e.g. `last_sweep_us`."""
        self._do("HSET", self.ops.keys.events, name, self.ops.now_us())

    def events(self) -> dict[str, int]:
        """All event counters."""
        return {k: int(v) for k, v in self._do("HGETALL", self.ops.keys.events).items()}

    def status_counts(self) -> dict[str, int]:
        """Sessions per status."""
        return self.ops.parse_counts(self._do("HGETALL", self.ops.keys.status_counts))

    def live_count(self) -> int:
        """Live sessions."""
        return int(self._do("ZCARD", self.ops.keys.live_index))

    def archive_backlog(self) -> int:
        """Ended sessions waiting for their archive."""
        return int(self._do("ZCARD", self.ops.keys.archive_index))

    def recent_durations(self) -> list[float]:
        """Durations (s) of the most recently archived calls."""
        return [float(v) for v in self._do("LRANGE", self.ops.keys.durations, 0, -1)]

    def write_statistics(self, document: Mapping[str, Any]) -> None:
        """Store the statistics document."""
        self._do("SET", self.ops.keys.statistics, json.dumps(document))

    def read_statistics(self) -> dict[str, Any] | None:
        """The stored statistics document, if any."""
        raw = self._do("GET", self.ops.keys.statistics)
        return None if raw is None else dict(json.loads(raw))

    def acquire_lock(self, name: str, ttl_s: float) -> str | None:
        """A token if this caller now holds the named lock, else None."""
        token = secrets.token_hex(8)
        ok = self._do("SET", self.ops.keys.lock(name), token, "NX", "PX", int(ttl_s * 1000))
        return token if ok else None

    def release_lock(self, name: str, token: str) -> None:
        """Release the named lock if `token` still holds it."""
        self._run(ScriptCall("release_lock", [self.ops.keys.lock(name)], [token]))

    def ping(self) -> bool:
        """True when Redis answers."""
        return bool(self._do("PING"))

    def close(self) -> None:
        """Release the connections."""
        self.client.close()
        self._pool.disconnect()
