"""`RedisSessionStorage`: the async shell over `RedisOps` for bridges and the service."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from redis.asyncio import BlockingConnectionPool, Redis
from redis.exceptions import NoScriptError, RedisError

from sessions.codec import Snapshot, encode_state
from sessions.keys import KeySpace
from sessions.redis_ops import (
    END_OUTCOMES,
    UPDATE_OUTCOMES,
    RedisOps,
    Retention,
    ScriptCall,
    redact_url,
    translate_error,
)
from sessions.redis_scripts import ALL as SCRIPTS
from sessions.state import SessionState
from sessions.storage import (
    ARCHIVE_MARKS,
    ArchiveMark,
    ClaimResult,
    CreateResult,
    EndOutcome,
    ExpireResult,
    SaveOutcome,
    SessionStorage,
    UpdateOutcome,
)


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
        **redis_kwargs: Any,
    ) -> None:
        self.redis_url = redis_url
        self.session_prefix = session_prefix
        self.default_ttl = default_ttl
        self.max_connections = max_connections
        retention = retention or Retention(session_ttl_s=default_ttl)
        self.ops = RedisOps(KeySpace(session_prefix), retention)
        redis_kwargs.setdefault("decode_responses", True)
        self._pool = BlockingConnectionPool.from_url(
            redis_url, max_connections=max_connections, timeout=pool_timeout_s, **redis_kwargs
        )
        self.client = Redis(connection_pool=self._pool)
        self._scripts = {name: self.client.register_script(src) for name, src in SCRIPTS.items()}

    async def _run(self, call: ScriptCall, conversation_id: str | None = None) -> Any:
        """EVALSHA straight through the client (redis-py's Script wrapper costs ~40 µs a call);
        after a Redis restart emptied the script cache, the script is loaded and run again."""
        script = self._scripts[call.script]
        command = ("EVALSHA", script.sha, len(call.keys), *call.keys, *call.args)
        try:
            try:
                return await self.client.execute_command(*command)  # type: ignore[no-untyped-call]
            except NoScriptError:
                await self.client.script_load(script.script)
                return await self.client.execute_command(*command)  # type: ignore[no-untyped-call]
        except RedisError as exc:
            raise translate_error(exc, self.redis_url, conversation_id) from exc

    async def _command(self, name: str, *args: Any, conversation_id: str | None = None) -> Any:
        try:
            return await self.client.execute_command(name, *args)  # type: ignore[no-untyped-call]
        except RedisError as exc:
            raise translate_error(exc, self.redis_url, conversation_id) from exc

    # -- atomic operations ---------------------------------------------------

    async def create(
        self, state: SessionState, replace: bool = False, max_live: int = 0
    ) -> CreateResult:
        call = self.ops.create(state, encode_state(state), replace, max_live)
        return self.ops.parse_create(await self._run(call, state.conversation_id))

    async def save(self, snapshot: Snapshot) -> bool:
        reply = await self._run(self.ops.save(snapshot), snapshot.conversation_id)
        return SaveOutcome(int(reply)) is SaveOutcome.APPLIED

    async def load(self, conversation_id: str, touch: bool = False) -> SessionState | None:
        if touch:
            flat = await self._run(self.ops.touch_load(conversation_id), conversation_id)
            fields = dict(zip(flat[0::2], flat[1::2], strict=True)) if flat else None
        else:
            key = self.ops.keys.session(conversation_id)
            try:
                fields = await self.client.hgetall(key)
            except RedisError as exc:
                raise translate_error(exc, self.redis_url, conversation_id) from exc
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
        return self.ops.parse_expire(await self._run(self.ops.expire_batch(max_age_s, limit)))

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
        return list(await self._command("ZRANGE", self.ops.keys.live_index, 0, -1))

    async def live_count(self) -> int:
        """Number of live sessions (one ZCARD)."""
        return int(await self._command("ZCARD", self.ops.keys.live_index))

    async def list_unarchived_ended_sessions(self) -> list[str]:
        """Ids of ended sessions waiting for their archive (the archive index)."""
        return list(await self._command("ZRANGE", self.ops.keys.archive_index, 0, -1))

    async def archive_backlog(self) -> int:
        """Number of ended sessions waiting for their archive."""
        return int(await self._command("ZCARD", self.ops.keys.archive_index))

    async def status_counts(self) -> dict[str, int]:
        raw = await self._command("HGETALL", self.ops.keys.status_counts)
        return self.ops.parse_counts(raw)

    async def get_stats(self) -> dict[str, Any]:
        return {
            "backend": "redis",
            "redis_url": redact_url(self.redis_url),
            "session_prefix": self.session_prefix,
            "default_ttl_s": self.default_ttl,
            "max_connections": self.max_connections,
            "live_sessions": await self.live_count(),
            "archive_backlog": await self.archive_backlog(),
            "status_counts": await self.status_counts(),
        }

    async def events(self) -> dict[str, int]:
        raw = await self._command("HGETALL", self.ops.keys.events)
        return {str(k): int(v) for k, v in (raw or {}).items()}

    async def ping(self) -> bool:
        """True when Redis answers."""
        return bool(await self._command("PING"))

    async def close(self) -> None:
        await self.client.aclose()
        await self._pool.disconnect()
