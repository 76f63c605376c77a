"""`opus-sessions demo`: one scripted call through the session core, printed as a timeline."""

from __future__ import annotations

import time
import uuid
from typing import Any

from sessions.codec import Snapshot
from sessions.factory import build_storage
from sessions.service import SessionManagerService
from sessions.settings import Settings


class Timeline:
    """Prints numbered, timed steps."""

    def __init__(self) -> None:
        self._t0 = time.perf_counter()
        self.steps: list[dict[str, Any]] = []

    def say(self, actor: str, what: str, **details: Any) -> None:
        elapsed_ms = (time.perf_counter() - self._t0) * 1000
        self.steps.append({"t_ms": round(elapsed_ms, 1), "actor": actor, "what": what, **details})
        extra = "  " + ", ".join(f"{k}={v}" for k, v in details.items()) if details else ""
        print(f"{elapsed_ms:8.1f} ms  {actor:<10} {what}{extra}", flush=True)


async def run_demo(settings: Settings) -> dict[str, Any]:
    """Create, converse, drop, resume on a second instance, end; return what happened."""
    out = Timeline()
    storage = build_storage(settings)
    first = SessionManagerService(storage, session_ttl_s=settings.session_ttl_s)
    second = SessionManagerService(storage, session_ttl_s=settings.session_ttl_s)
    await first.start()
    cid = f"demo-{uuid.uuid4().hex[:8]}"
    out.say("storage", f"{settings.storage_backend} backend", prefix=settings.session_prefix)
    try:
        state = await first.create_session(cid, caller="+15550100", status="active")
        out.say("bridge-1", "session created", conversation_id=cid, epoch=state.epoch)
        for role, text in [
            ("assistant", "Hello, thanks for calling. How can I help?"),
            ("user", "I'd like to check my balance."),
        ]:
            state.add_conversation_item({"role": role, "content": text})
            out.say("bridge-1", f"{role} turn", text=text)
        state.add_function_call({"name": "lookup_account", "arguments": {"id": "42"},
                                 "result": {"balance": "12.50"}})  # fmt: skip
        out.say("bridge-1", "function call", name="lookup_account")
        await storage.save(Snapshot.of(state))
        out.say("bridge-1", "snapshot saved", seq=state.seq)
        out.say("bridge-1", "websocket dropped")
        resumed = await second.resume_session(cid, max_age_seconds=settings.session_ttl_s)
        assert resumed is not None, "resume refused"
        out.say("bridge-2", "session resumed", epoch=resumed.epoch,
                resumed_count=resumed.resumed_count, turns=len(resumed.conversation_history),
                function_calls=len(resumed.function_calls))  # fmt: skip
        state.add_conversation_item({"role": "assistant", "content": "late words"})
        late = await storage.save(Snapshot.of(state))
        out.say("bridge-1", "late snapshot from the old owner", accepted=late)
        await second.end_session(cid, "caller hung up")
        final = await second.get_session(cid)
        assert final is not None
        out.say("bridge-2", "session ended", status=final.status.value, reason=final.end_reason)
        refused = await first.try_resume(cid)
        out.say("bridge-1", "resume after end", outcome=refused.outcome.value)
        stats = await first.get_session_stats()
        out.say("service", "stats", status_counts=stats["status_counts"])
        await storage.delete_session(cid)
        return {"conversation_id": cid, "steps": out.steps}
    finally:
        await first.stop()
