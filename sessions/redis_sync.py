"""`SyncRedisStore`: the synchronous shell over `RedisOps`, used by Celery tasks."""

from __future__ import annotations

import json
import secrets
from collections.abc import Mapping, Sequence
from typing import Any, TypeVar

from redis.exceptions import NoScriptError, RedisError

import sessions.redis_reads as reads
from sessions.codec import Snapshot
from sessions.keys import KeySpace
from sessions.redis_ops import END_OUTCOMES, RedisOps, Retention, ScriptCall, translate_error
from sessions.redis_reads import FanOut
from sessions.redis_scripts import ALL as SCRIPTS
from sessions.redis_topology import RedisTopology
from sessions.sentinel_watch import MasterWatch
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

T = TypeVar("T")
SAVE_CHUNK = 100  # snapshots a script call: bounds how long one call holds Redis (~2 ms)


class SyncRedisStore:
    """Blocking access to the same sessions, scripts and indexes as `RedisSessionStorage`."""

    def __init__(
        self,
        redis_url: str = "redis://127.0.0.1:6379",
        session_prefix: str = "session:",
        retention: Retention | None = None,
        max_connections: int = 10,
        pool_timeout_s: float = 5.0,
        *,
        topology: RedisTopology | None = None,
        **redis_kwargs: Any,
    ) -> None:
        self.topology = topology or RedisTopology(url=redis_url, extra=redis_kwargs)
        self.redis_url = self.topology.url
        self.ops = RedisOps(self.topology.keyspace(session_prefix), retention or Retention())
        self.client = self.topology.sync_client(max_connections, pool_timeout_s)
        self._scripts = {name: self.client.register_script(src) for name, src in SCRIPTS.items()}
        self._where = self.topology.describe()
        self._watch: MasterWatch | None = None
        if self.topology.kind == "sentinel":  # follow failovers as they happen
            self._watch = MasterWatch(self.topology, self.client.connection_pool)
            self._watch.start()

    @property
    def keys(self) -> KeySpace:
        """The key layout in use."""
        return self.ops.keys

    def _run(self, call: ScriptCall, conversation_id: str | None = None) -> Any:
        script = self._scripts[call.script]
        command = ("EVALSHA", script.sha, len(call.keys), *call.keys, *call.args)
        try:
            try:
                return self.client.execute_command(*command)
            except NoScriptError:
                self.client.script_load(script.script)
                return self.client.execute_command(*command)
        except RedisError as exc:
            raise translate_error(exc, self._where, conversation_id) from exc

    def _run_many(self, calls: Sequence[ScriptCall]) -> list[Any]:
        """Several script calls in one pipeline; a call whose script the server lost (after a
        restart) is loaded and sent again, and only that call."""
        if len(calls) == 1:
            return [self._run(calls[0])]
        replies = self._pipelined(calls)
        lost = [i for i, reply in enumerate(replies) if isinstance(reply, NoScriptError)]
        for name in {calls[i].script for i in lost}:
            self.client.script_load(self._scripts[name].script)
        for index, reply in zip(lost, self._pipelined([calls[i] for i in lost]), strict=True):
            replies[index] = reply
        for reply in replies:
            if isinstance(reply, RedisError):
                raise translate_error(reply, self._where, None) from reply
        return replies

    def _pipelined(self, calls: Sequence[ScriptCall]) -> list[Any]:
        if not calls:
            return []
        try:
            with self.client.pipeline(transaction=False) as pipe:
                for call in calls:
                    sha = self._scripts[call.script].sha
                    pipe.execute_command("EVALSHA", sha, len(call.keys), *call.keys, *call.args)
                return list(pipe.execute(raise_on_error=False))
        except RedisError as exc:
            raise translate_error(exc, self._where, None) from exc

    def _do(self, *command: Any) -> Any:
        try:
            return self.client.execute_command(*command)
        except RedisError as exc:
            raise translate_error(exc, self._where, None) from exc

    def _read(self, plan: FanOut[T]) -> T:
        """One command per shard: the command itself for one shard, else one pipeline."""
        try:
            if len(plan.commands) == 1:
                return plan.merge([self.client.execute_command(*plan.commands[0])])
            with self.client.pipeline(transaction=False) as pipe:
                for command in plan.commands:
                    pipe.execute_command(*command)
                return plan.merge(list(pipe.execute()))
        except RedisError as exc:
            raise translate_error(exc, self._where, None) from exc

    def save(self, snapshot: Snapshot) -> bool:
        """Compare-and-set save of one snapshot (fenced history still merges); True if applied."""
        reply = self._run(self.ops.save(snapshot), snapshot.conversation_id)
        return SaveOutcome(int(reply)) is SaveOutcome.APPLIED

    def save_many(self, snapshots: Sequence[Snapshot]) -> SaveResult:
        """Apply a batch: per chunk of SAVE_CHUNK, one script call per shard (the script also
        counts the outcomes in the shard's events)."""
        outcomes: list[int] = []
        for start in range(0, len(snapshots), SAVE_CHUNK):
            chunk = snapshots[start : start + SAVE_CHUNK]
            calls = self.ops.save_many(chunk)
            outcomes += self.ops.split_outcomes(chunk, self._run_many(calls))
        return count_saves(snapshots, outcomes)

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
        """End up to `limit` sessions idle past `max_age_s` (each shard in turn)."""
        sweep = self.ops.expire_sweep(max_age_s, limit)
        while (step := sweep.next_read()) is not None:
            if found := self._do(*step[1]):
                sweep.add(self._run(sweep.script(step[0], found)))
        return sweep.result()

    def archive_overdue(self, older_than_s: float, limit: int) -> list[str]:
        """Ended sessions still unarchived `older_than_s` after they ended, oldest first."""
        cutoff_us = self.ops.now_us() - int(older_than_s * 1_000_000)
        return self._read(reads.archive_overdue(self.ops.keys, cutoff_us, limit))

    def mark_archived(
        self, conversation_id: str, duration_s: float, counters: Mapping[str, int] | None = None
    ) -> ArchiveMark:
        """Flag an ended session as archived (idempotent; `counters` are added once)."""
        call = self.ops.mark_archived(conversation_id, duration_s, counters)
        return ARCHIVE_MARKS[int(self._run(call, conversation_id))]

    def add_event(self, name: str, amount: int = 1) -> None:
        """Add to a monotonic event counter (kept in the shard the counter's name picks)."""
        if amount:
            self._do("HINCRBY", self.ops.keys.events(self.ops.keys.shard_of(name)), name, amount)

    def mark_time(self, name: str) -> None:
        """Record now (µs) under an event name, e.g. `last_sweep_us`."""
        key = self.ops.keys.events(self.ops.keys.shard_of(name))
        self._do("HSET", key, name, self.ops.now_us())

    def events(self) -> dict[str, int]:
        """All event counters, summed over the shards."""
        return self._read(reads.events(self.ops.keys))

    def status_counts(self) -> dict[str, int]:
        """Sessions per status."""
        return self._read(reads.status_counts(self.ops.keys))

    def live_count(self) -> int:
        """Live sessions."""
        return self._read(reads.live_count(self.ops.keys))

    def list_live(self) -> list[str]:
        """Live ids, least recently active first."""
        return self._read(reads.live_ids(self.ops.keys))

    def archive_backlog(self) -> int:
        """Ended sessions waiting for their archive."""
        return self._read(reads.archive_backlog(self.ops.keys))

    def recent_durations(self) -> list[float]:
        """Durations (s) of the most recently archived calls."""
        return self._read(reads.recent_durations(self.ops.keys))

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
        if self._watch is not None:
            self._watch.stop()
        self.client.close()
