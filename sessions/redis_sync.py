"""`SyncRedisStore`: the synchronous shell over `RedisOps`, used by Celery tasks."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from redis import BlockingConnectionPool, Redis
from redis.exceptions import RedisError

from sessions.codec import Snapshot
from sessions.keys import KeySpace
from sessions.redis_ops import (
    END_OUTCOMES,
    RedisOps,
    Retention,
    ScriptCall,
    translate_error,
)
from sessions.redis_scripts import ALL as SCRIPTS
from sessions.state import SessionState
from sessions.storage import EndOutcome, ExpireResult, SaveResult, count_saves


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

    def save_many(self, snapshots: Sequence[Snapshot]) -> SaveResult:
        """Apply a batch with the compare-and-set script in one pipeline."""
        if not snapshots:
            return SaveResult(applied=0, stale=0)
        try:
            with self.client.pipeline(transaction=False) as pipe:
                for snap in snapshots:
                    call = self.ops.save(snap)
                    self._scripts["save"](keys=call.keys, args=call.args, client=pipe)
                replies = pipe.execute()
        except RedisError as exc:
            raise translate_error(exc, self.redis_url, None) from exc
        return count_saves([bool(r) for r in replies])

    def load(self, conversation_id: str) -> SessionState | None:
        """Read a session without touching its activity."""
        try:
            fields = self.client.hgetall(self.ops.keys.session(conversation_id))
        except RedisError as exc:
            raise translate_error(exc, self.redis_url, conversation_id) from exc
        return self.ops.parse_state(conversation_id, fields)  # type: ignore[arg-type]

    def end(self, conversation_id: str, reason: str) -> EndOutcome:
        """Atomically end a session."""
        return END_OUTCOMES[self._run(self.ops.end(conversation_id, reason), conversation_id)]

    def expire_batch(self, max_age_s: float, limit: int) -> ExpireResult:
        """End up to `limit` sessions idle past `max_age_s`."""
        return self.ops.parse_expire(self._run(self.ops.expire_batch(max_age_s, limit)))

    def mark_archived(self, conversation_id: str) -> bool:
        """Flag an ended session as archived."""
        return bool(self._run(self.ops.mark_archived(conversation_id), conversation_id))

    def delete(self, conversation_id: str) -> bool:
        """Delete a session and its index entries."""
        return bool(self._run(self.ops.delete(conversation_id), conversation_id))

    def close(self) -> None:
        """Release the connections."""
        self.client.close()
        self._pool.disconnect()
