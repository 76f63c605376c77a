"""`RedisSessionStorage`: the async shell over `RedisOps` for bridges and the service."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, TypeVar

from redis.exceptions import NoScriptError, RedisError

import sessions.redis_reads as reads
from sessions.codec import Snapshot, encode_state
from sessions.errors import StorageUnavailable
from sessions.redis_lane import DirectLane
from sessions.redis_ops import (
    END_OUTCOMES,
    UPDATE_OUTCOMES,
    RedisOps,
    Retention,
    ScriptCall,
    translate_error,
)
from sessions.redis_reads import FanOut
from sessions.redis_scripts import ALL as SCRIPTS
from sessions.redis_topology import RedisTopology
from sessions.sentinel_watch import AsyncMasterWatch
from sessions.state import SessionState
from sessions.storage import (
    ARCHIVE_MARKS,
    ArchiveMark,
    ClaimResult,
    CreateResult,
    EndOutcome,
    ExpireResult,
    SaveAck,
    SaveOutcome,
    SessionStorage,
    UpdateOutcome,
)

T = TypeVar("T")
COMMAND_TIMEOUT_S = 5.0  # one round trip, including a script's run


class RedisSessionStorage(SessionStorage):
    """Sessions in Redis hashes, written only by server-side scripts that also keep the indexes."""

    def __init__(
        self,
        redis_url: str = "redis://localhost:6379",
        session_prefix: str = "session:",
        default_ttl: int = 3600,
        max_connections: int = 10,
        *,
        retention: Retention | None = None,
        pool_timeout_s: float = 5.0,
        topology: RedisTopology | None = None,
        **redis_kwargs: Any,
    ) -> None:
        self.topology = topology or RedisTopology(url=redis_url, extra=redis_kwargs)
        self.redis_url = self.topology.url
        self.session_prefix = session_prefix
        self.default_ttl = default_ttl
        self.max_connections = max_connections
        self.command_timeout_s = COMMAND_TIMEOUT_S
        self.pool_timeout_s = pool_timeout_s
        retention = retention or Retention(session_ttl_s=default_ttl)
        self.ops = RedisOps(self.topology.keyspace(session_prefix), retention)
        self.client = self.topology.async_client(max_connections)
        self._slots = asyncio.Semaphore(max_connections)
        self._cluster_pending = self.topology.kind == "cluster"
        self._cluster_lock = asyncio.Lock()
        self._lane = None if self._cluster_pending else DirectLane(self.client.connection_pool)
        self._watch = (AsyncMasterWatch(self.topology, self._lane)
                       if self.topology.kind == "sentinel" else None)  # fmt: skip
        self._scripts = {name: self.client.register_script(src) for name, src in SCRIPTS.items()}
        self._where = self.topology.describe()

    async def _call(self, send: Callable[[], Awaitable[Any]], conversation_id: str | None) -> Any:
        """One round trip: at most `max_connections` at once (waiting up to `pool_timeout_s`
        for a turn), bounded by `command_timeout_s`; redis-py's errors as the package's.

        The bound is one `asyncio.timeout` here rather than redis-py's socket timeouts, which
        cost an extra task (and loop iterations) on every write and read.
        """
        if self._cluster_pending:
            await self._learn_cluster()
        if self._slots.locked():
            await self._wait_for_slot()
        else:
            await self._slots.acquire()  # free: no wait, no timer
        try:
            async with asyncio.timeout(self.command_timeout_s):
                return await send()
        except TimeoutError:
            raise StorageUnavailable(
                f"{self._where} did not answer within {self.command_timeout_s:g} s"
            ) from None
        except NoScriptError:
            raise
        except RedisError as exc:
            raise translate_error(exc, self._where, conversation_id) from exc
        finally:
            self._slots.release()

    async def _learn_cluster(self) -> None:
        """Learn the cluster's slot map once, before the first command (many first commands
        at once would each start redis-py's discovery and close one another's connections)."""
        async with self._cluster_lock:
            if self._cluster_pending:
                try:
                    async with asyncio.timeout(self.command_timeout_s):
                        await self.client.initialize()
                except (RedisError, TimeoutError) as exc:
                    raise StorageUnavailable(f"{self._where} is unavailable: {exc}") from None
                self._cluster_pending = False

    async def _wait_for_slot(self) -> None:
        try:
            async with asyncio.timeout(self.pool_timeout_s):
                await self._slots.acquire()
        except TimeoutError:
            raise StorageUnavailable(
                f"{self._where}: all {self.max_connections} connections busy for "
                f"{self.pool_timeout_s:g} s (REDIS_MAX_CONNECTIONS)"
            ) from None

    async def _run(self, call: ScriptCall, conversation_id: str | None = None) -> Any:
        """EVALSHA on the direct lane (a cluster's client routes it by its first key); after a
        Redis restart emptied the script cache, the script is loaded and run again."""
        script = self._scripts[call.script]
        command = ("EVALSHA", script.sha, len(call.keys), *call.keys, *call.args)
        try:
            return await self._call(self._sender(command), conversation_id)
        except NoScriptError:
            await self._load_script(script.script, conversation_id)
            return await self._call(self._sender(command), conversation_id)

    async def _load_script(self, source: str, conversation_id: str | None) -> None:
        if self._lane is None:  # a cluster's client loads it on every master
            await self._call(lambda: self.client.script_load(source), conversation_id)
        else:
            await self._call(self._sender(("SCRIPT", "LOAD", source)), conversation_id)

    def _sender(self, command: tuple[Any, ...]) -> Callable[[], Awaitable[Any]]:
        lane = self._lane
        if lane is None:
            return lambda: self.client.execute_command(*command)
        return lambda: lane.execute(command)

    async def _command(self, *command: Any, conversation_id: str | None = None) -> Any:
        return await self._call(lambda: self.client.execute_command(*command), conversation_id)

    async def _pipelined(self, commands: list[tuple[Any, ...]]) -> list[Any]:
        async def send() -> list[Any]:
            pipe = self.client.pipeline(transaction=False)
            for command in commands:
                pipe.execute_command(*command)
            return list(await pipe.execute())

        return list(await self._call(send, None))

    async def _read(self, plan: FanOut[T]) -> T:
        """One command per shard: the command itself for one shard, else one pipeline."""
        if len(plan.commands) == 1:
            return plan.merge([await self._command(*plan.commands[0])])
        return plan.merge(await self._pipelined(plan.commands))

    # -- atomic operations ---------------------------------------------------

    async def create(
        self, state: SessionState, replace: bool = False, max_live: int = 0
    ) -> CreateResult:
        call = self.ops.create(state, encode_state(state), replace, max_live)
        return self.ops.parse_create(await self._run(call, state.conversation_id))

    async def save(self, snapshot: Snapshot) -> bool:
        reply = await self._run(self.ops.save(snapshot), snapshot.conversation_id)
        return SaveOutcome(int(reply)) is SaveOutcome.APPLIED

    async def save_durable(
        self, snapshot: Snapshot, replicas: int = 0, timeout_ms: int = 500
    ) -> SaveAck:
        """Save; with `replicas`, then WAIT (on the same connection) until that many replicas
        have the write, at most `timeout_ms`. A cluster gets no WAIT: its command would reach
        another connection than the write (so `replicated` is None there)."""
        if replicas <= 0 or self.topology.kind == "cluster":
            return SaveAck(await self.save(snapshot), None)
        call = self.ops.save(snapshot)
        script = self._scripts[call.script]
        commands = [("EVALSHA", script.sha, len(call.keys), *call.keys, *call.args),
                    ("WAIT", replicas, timeout_ms)]  # fmt: skip
        try:
            outcome, acked = await self._pipelined(commands)
        except NoScriptError:
            await self._load_script(script.script, None)
            outcome, acked = await self._pipelined(commands)
        return SaveAck(SaveOutcome(int(outcome)) is SaveOutcome.APPLIED, int(acked))

    async def load(self, conversation_id: str, touch: bool = False) -> SessionState | None:
        if touch:
            flat = await self._run(self.ops.touch_load(conversation_id), conversation_id)
            return self.ops.parse_flat(conversation_id, flat)
        key = self.ops.keys.session(conversation_id)
        fields = await self._call(lambda: self.client.hgetall(key), conversation_id)
        return self.ops.parse_state(conversation_id, fields)

    async def claim(
        self, conversation_id: str, max_age_s: float, holder: str | None = None
    ) -> ClaimResult:
        call = self.ops.claim(conversation_id, max_age_s, holder)
        return self.ops.parse_claim(conversation_id, await self._run(call, conversation_id))

    async def end(
        self, conversation_id: str, reason: str, expected_epoch: int | None = None
    ) -> EndOutcome:
        call = self.ops.end(conversation_id, reason, expected_epoch)
        return END_OUTCOMES[await self._run(call, conversation_id)]

    async def update_fields(
        self, conversation_id: str, fields: Mapping[str, str], status: str | None = None
    ) -> UpdateOutcome:
        call = self.ops.update(conversation_id, fields, status)
        return UPDATE_OUTCOMES[await self._run(call, conversation_id)]

    async def expire_batch(self, max_age_s: float, limit: int) -> ExpireResult:
        sweep = self.ops.expire_sweep(max_age_s, limit)
        while (step := sweep.next_read()) is not None:
            if found := await self._command(*step[1]):
                sweep.add(await self._run(sweep.script(step[0], found)))
        return sweep.result()

    async def delete_session(self, conversation_id: str) -> bool:
        return bool(await self._run(self.ops.delete(conversation_id), conversation_id))

    async def mark_archived(
        self,
        conversation_id: str,
        duration_s: float = 0.0,
        counters: Mapping[str, int] | None = None,
    ) -> ArchiveMark:
        call = self.ops.mark_archived(conversation_id, duration_s, counters)
        return ARCHIVE_MARKS[int(await self._run(call, conversation_id))]

    async def read_statistics(self) -> dict[str, Any] | None:
        raw = await self._command("GET", self.ops.keys.statistics)
        return None if raw is None else dict(json.loads(raw))

    # -- reads over the indexes ------------------------------------------------

    async def list_active_sessions(self) -> list[str]:
        return await self._read(reads.live_ids(self.ops.keys))

    async def live_count(self) -> int:
        """Number of live sessions (one ZCARD a shard)."""
        return await self._read(reads.live_count(self.ops.keys))

    async def list_unarchived_ended_sessions(self) -> list[str]:
        """Ids of ended sessions waiting for their archive (the archive index)."""
        return await self._read(reads.archive_ids(self.ops.keys))

    async def archive_backlog(self) -> int:
        """Number of ended sessions waiting for their archive."""
        return await self._read(reads.archive_backlog(self.ops.keys))

    async def status_counts(self) -> dict[str, int]:
        return await self._read(reads.status_counts(self.ops.keys))

    async def get_stats(self) -> dict[str, Any]:
        return {
            "backend": "redis",
            "redis": self._where,
            "topology": self.topology.kind,
            "shards": self.ops.keys.shards,
            "session_prefix": self.session_prefix,
            "default_ttl_s": self.default_ttl,
            "max_connections": self.max_connections,
            "live_sessions": await self.live_count(),
            "archive_backlog": await self.archive_backlog(),
            "status_counts": await self.status_counts(),
        }

    async def events(self) -> dict[str, int]:
        return await self._read(reads.events(self.ops.keys))

    async def ping(self) -> bool:
        """True when Redis answers."""
        return bool(await self._command("PING"))

    async def start(self) -> None:
        """On a cluster, learn the slot map now (pub/sub needs it before any command ran); on
        Sentinel, follow failovers as they happen (`sessions.sentinel_watch`)."""
        if self._cluster_pending:
            await self._learn_cluster()
        if self._watch is not None:
            self._watch.start()

    async def close(self) -> None:
        if self._watch is not None:
            await self._watch.stop()
        if self._lane is not None:
            await self._lane.disconnect()
        await self.client.aclose()
