"""In-process storage for the embedded default and development: the async face of `MemoryStore`."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Mapping
from typing import Any

from sessions.codec import Snapshot
from sessions.keys import check_conversation_id
from sessions.memory_store import MemoryStore
from sessions.state import SessionState
from sessions.storage import (
    ArchiveMark,
    ClaimResult,
    CreateResult,
    EndOutcome,
    ExpireResult,
    SessionStorage,
    UpdateOutcome,
)

__all__ = ["MemorySessionStorage", "MemoryStore"]

log = logging.getLogger(__name__)


class MemorySessionStorage(SessionStorage):
    """Async face of `MemoryStore`, with a background sweep started by `start()`."""

    def __init__(
        self, max_sessions: int = 1000, cleanup_interval: float = 300, session_ttl_s: float = 3600
    ) -> None:
        self.store = MemoryStore(max_sessions=max_sessions, session_ttl_s=session_ttl_s)
        self.cleanup_interval = cleanup_interval
        self.session_ttl_s = session_ttl_s
        self._cleanup_task: asyncio.Task[None] | None = None

    async def create(
        self, state: SessionState, replace: bool = False, max_live: int = 0
    ) -> CreateResult:
        return self.store.create(state, replace, max_live)

    async def save(self, snapshot: Snapshot) -> bool:
        return self.store.save(snapshot)

    async def load(self, conversation_id: str, touch: bool = False) -> SessionState | None:
        return self.store.load(check_conversation_id(conversation_id), touch)

    async def claim(
        self, conversation_id: str, max_age_s: float, holder: str | None = None
    ) -> ClaimResult:
        return self.store.claim(check_conversation_id(conversation_id), max_age_s, holder)

    async def end(
        self, conversation_id: str, reason: str, expected_epoch: int | None = None
    ) -> EndOutcome:
        return self.store.end(check_conversation_id(conversation_id), reason, expected_epoch)

    async def update_fields(
        self, conversation_id: str, fields: Mapping[str, str], status: str | None = None
    ) -> UpdateOutcome:
        return self.store.update_fields(check_conversation_id(conversation_id), fields, status)

    async def expire_batch(self, max_age_s: float, limit: int) -> ExpireResult:
        return self.store.expire_batch(max_age_s, limit)

    async def delete_session(self, conversation_id: str) -> bool:
        return self.store.delete(check_conversation_id(conversation_id))

    async def mark_archived(
        self,
        conversation_id: str,
        duration_s: float = 0.0,
        counters: Mapping[str, int] | None = None,
    ) -> ArchiveMark:
        return self.store.mark_archived(
            check_conversation_id(conversation_id), duration_s, counters
        )

    async def read_statistics(self) -> dict[str, Any] | None:
        return self.store.read_statistics()

    async def list_active_sessions(self) -> list[str]:
        return self.store.list_live()

    async def live_count(self) -> int:
        return self.store.live_count()

    async def status_counts(self) -> dict[str, int]:
        return self.store.status_counts()

    async def get_stats(self) -> dict[str, Any]:
        sizes = self.store.sizes()
        return {
            "backend": "memory",
            "max_sessions": self.store.max_sessions,
            "cleanup_interval_s": self.cleanup_interval,
            "live_sessions": sizes["live"],
            "stored_sessions": sizes["stored"],
            "archive_backlog": sizes["archive_backlog"],
            "evictions": sizes["evictions"],
            "status_counts": self.store.status_counts(),
        }

    async def events(self) -> dict[str, int]:
        return self.store.events()

    async def start(self) -> None:
        if self._cleanup_task is None or self._cleanup_task.done():
            self._cleanup_task = asyncio.create_task(self._cleanup_loop(), name="memory-sweep")

    async def close(self) -> None:
        task, self._cleanup_task = self._cleanup_task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _cleanup_loop(self) -> None:
        while True:
            await asyncio.sleep(self.cleanup_interval)
            try:
                ended = await self.cleanup_expired_sessions(self.session_ttl_s)
            except Exception:
                log.exception("memory storage sweep failed")
                continue
            if ended:
                log.info("memory storage sweep ended %d idle sessions", ended)
