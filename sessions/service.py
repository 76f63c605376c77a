"""`SessionManagerService`: the session API bridges and tools use, over any `SessionStorage`."""

from __future__ import annotations

import logging
from typing import Any

from pydantic import ValidationError

from sessions.clock import utc_now
from sessions.codec import encode_fields
from sessions.control import CallControl
from sessions.errors import InvalidSessionData, InvalidUpdate, SessionExists, SessionLimitReached
from sessions.keys import check_conversation_id
from sessions.state import (
    SCHEMA_VERSION,
    SessionState,
    SessionStatus,
    describe_validation_error,
)
from sessions.storage import ClaimOutcome, ClaimResult, EndOutcome, SessionStorage, UpdateOutcome

log = logging.getLogger(__name__)

READ_ONLY_FIELDS = frozenset({"conversation_id", "epoch", "seq", "schema_version"})
UPDATABLE_FIELDS = frozenset(SessionState.model_fields) - READ_ONLY_FIELDS

RESUME_REFUSALS = {
    ClaimOutcome.MISSING: "session not found",
    ClaimOutcome.ENDED: "session has ended",
    ClaimOutcome.ERROR: "session is in error",
    ClaimOutcome.EXPIRED: "session expired",
}


class SessionManagerService:
    """Create, read, update, resume and end sessions; all writes are atomic in the storage."""

    def __init__(
        self,
        storage: SessionStorage,
        *,
        session_ttl_s: float = 3600,
        max_sessions: int | None = None,
        control: CallControl | None = None,
    ) -> None:
        self.storage = storage
        self.session_ttl_s = session_ttl_s
        self.max_sessions = max_sessions
        self.control = control
        self._running = False

    async def start(self) -> None:
        """Start the storage's background work."""
        await self.storage.start()
        self._running = True
        log.info("session manager started on %s", type(self.storage).__name__)

    async def stop(self) -> None:
        """Stop background work and release the storage's connections."""
        await self.storage.close()
        self._running = False
        log.info("session manager stopped")

    async def create_session(
        self, conversation_id: str, *, replace: bool = False, **fields: Any
    ) -> SessionState:
        """Create and store a session; SessionExists if a live one has the id, unless `replace`."""
        unknown = set(fields) - UPDATABLE_FIELDS
        if unknown:
            raise InvalidSessionData(f"unknown or read-only session fields: {sorted(unknown)}")
        state = SessionState.from_dict(
            {"conversation_id": conversation_id, "schema_version": SCHEMA_VERSION, **fields}
        )
        result = await self.storage.create(state, replace=replace, max_live=self.max_sessions or 0)
        if result.full:
            raise SessionLimitReached(f"{self.max_sessions} live sessions: MAX_SESSIONS reached")
        if not result.created:
            detail = "waiting for its archive" if result.existing_status == "ended" else "live"
            raise SessionExists(
                f"session {conversation_id!r} exists ({result.existing_status}, {detail}); "
                "pass replace=True to replace it"
            )
        state.epoch, state.seq = result.epoch, 0
        log.info("created session %s (epoch %d)", conversation_id, result.epoch)
        return state

    async def get_session(self, conversation_id: str) -> SessionState | None:
        """The session, marking activity now; None if there is none."""
        return await self.storage.load(conversation_id, touch=True)

    async def update_session(self, conversation_id: str, **updates: Any) -> bool:
        """Validate, coerce and apply field updates atomically; False if nothing was stored."""
        fields, status = self._encode_updates(conversation_id, updates)
        ending = status == SessionStatus.ENDED.value
        outcome = await self.storage.update_fields(
            conversation_id, fields, None if ending else status
        )
        if outcome is not UpdateOutcome.OK:
            return False
        if ending:
            reason = str(updates.get("end_reason") or "ended by update")
            await self.storage.end(conversation_id, reason)
        return True

    async def resume_session(
        self, conversation_id: str, max_age_seconds: float = 3600
    ) -> SessionState | None:
        """Claim a resumable session (epoch + 1, resumed_count + 1, ACTIVE); None if refused."""
        result = await self.try_resume(conversation_id, max_age_seconds)
        return result.state

    async def try_resume(
        self, conversation_id: str, max_age_seconds: float = 3600, *, holder: str | None = None
    ) -> ClaimResult:
        """Like `resume_session`, with the reason when refused; `holder` takes the call."""
        cid = check_conversation_id(conversation_id)
        result = await self.storage.claim(cid, max_age_seconds, holder)
        if result.state is not None:
            log.info(
                "resumed session %s (resume #%d, epoch %d)",
                conversation_id,
                result.state.resumed_count,
                result.state.epoch,
            )
        else:
            log.info("refused resume of %s: %s", conversation_id, RESUME_REFUSALS[result.outcome])
        return result

    async def end_session(self, conversation_id: str, reason: str = "Session ended") -> bool:
        """End a session (terminal) recording reason and time; False if missing or already ended.

        With call control, a call live on a bridge is hung up there (the caller hears the
        hang-up, and the bridge's final state holds every turn); otherwise, and when its
        holder does not answer, the session is ended in storage.
        """
        cid = check_conversation_id(conversation_id)
        if await self.hang_up_live(cid, reason):
            return True
        outcome = await self.storage.end(cid, reason)
        if outcome is EndOutcome.ENDED:
            log.info("ended session %s: %s", cid, reason)
        return outcome is EndOutcome.ENDED

    async def hang_up_live(self, conversation_id: str, reason: str) -> bool:
        """Ask the bridge holding a live call to hang it up; True when it did."""
        if self.control is None:
            return False
        state = await self.storage.load(check_conversation_id(conversation_id))
        if state is None or state.status is not SessionStatus.ACTIVE or not state.session_id:
            return False
        if not await self.control.hang_up(state.session_id, conversation_id, reason):
            log.info("session %s: its holder %s did not answer", conversation_id, state.session_id)
            return False
        log.info("session %s: hung up live on %s (%s)", conversation_id, state.session_id, reason)
        return True

    async def delete_session(self, conversation_id: str) -> bool:
        """Remove a session's hot state; True if it existed."""
        return await self.storage.delete_session(check_conversation_id(conversation_id))

    async def list_active_sessions(self) -> list[str]:
        """Ids of live sessions."""
        return await self.storage.list_active_sessions()

    async def cleanup_expired_sessions(self, max_age_seconds: float | None = None) -> int:
        """End sessions idle past `max_age_seconds` (default: the session TTL)."""
        age_s = self.session_ttl_s if max_age_seconds is None else max_age_seconds
        return await self.storage.cleanup_expired_sessions(age_s)

    async def get_session_stats(self) -> dict[str, Any]:
        """Live counts now, and the statistics task's last document (durations, archive health)."""
        storage_stats = await self.storage.get_stats()
        return {
            "active_sessions_count": storage_stats["live_sessions"],
            "status_counts": storage_stats["status_counts"],
            "storage_stats": storage_stats,
            "statistics": await self.storage.read_statistics(),
            "service_status": "running" if self._running else "stopped",
        }

    async def validate_session(
        self, conversation_id: str, max_age_seconds: float | None = None
    ) -> dict[str, Any]:
        """Whether a session can be resumed, and why not (missing, ended, error, expired)."""
        state = await self.storage.load(check_conversation_id(conversation_id), touch=False)
        if state is None:
            return {
                "valid": False,
                "reason": RESUME_REFUSALS[ClaimOutcome.MISSING],
                "can_resume": False,
            }
        idle_s = (utc_now() - state.last_activity).total_seconds()
        age_s = self.session_ttl_s if max_age_seconds is None else max_age_seconds
        details = {
            "status": state.status.value,
            "resume_count": state.resumed_count,
            "last_activity": state.last_activity.isoformat(),
            "idle_s": round(idle_s, 3),
        }
        reason = _refusal(state, idle_s, age_s)
        if reason is not None:
            return {"valid": False, "reason": reason, "can_resume": False, **details}
        return {"valid": True, "reason": "session is valid", "can_resume": True, **details}

    def _encode_updates(
        self, conversation_id: str, updates: dict[str, Any]
    ) -> tuple[dict[str, str], str | None]:
        unknown = set(updates) - UPDATABLE_FIELDS
        if unknown:
            raise InvalidUpdate(f"cannot update unknown or read-only fields: {sorted(unknown)}")
        if not updates:
            raise InvalidUpdate("no fields to update")
        try:
            probe = SessionState.model_validate(
                {"conversation_id": conversation_id, "schema_version": SCHEMA_VERSION, **updates}
            )
        except ValidationError as exc:
            raise InvalidUpdate(describe_validation_error(exc)) from None
        fields = encode_fields(probe, set(updates) - {"status"})
        status = probe.status.value if "status" in updates else None
        return fields, status


def _refusal(state: SessionState, idle_s: float, max_age_s: float) -> str | None:
    if state.status is SessionStatus.ENDED:
        return RESUME_REFUSALS[ClaimOutcome.ENDED]
    if state.status is SessionStatus.ERROR:
        return RESUME_REFUSALS[ClaimOutcome.ERROR]
    if idle_s > max_age_s:
        return RESUME_REFUSALS[ClaimOutcome.EXPIRED]
    return None
