"""Long calls outlive model sessions: move to a new session at a turn boundary, before the cap.

A model session lives at most 60 minutes on OpenAI (30 on Azure). In the last part of its
life (the last ROLLOVER_WINDOW_FRACTION of MODEL_SESSION_MAX_S, at most ROLLOVER_WINDOW_S) the
call waits for a turn boundary: no response in progress or asked for, no caller turn waiting
for its answer, no bot audio playing. There it opens the new session, replays the history into
it and switches the audio over, then closes the old one; the caller hears nothing of it. If
the conversation moved on while the new session was being prepared, it prepares again. If no
boundary comes before the deadline, it rolls over anyway and says so in the log. The reactive
reconnect (`RealtimeClient`) stays for sessions the server closes by surprise.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Hashable
from typing import Protocol

from bridges.errors import ModelRefused, ModelUnavailable
from bridges.model.client import RealtimeClient
from sessions.state import SessionState

log = logging.getLogger(__name__)
ROLLOVER_WINDOW_S = 120.0
ROLLOVER_WINDOW_FRACTION = 0.2
RETRY_S = 1.0


class Conversation(Protocol):
    """What a rollover needs of its call: its model, state, and where its turns are."""

    closed: bool
    model: RealtimeClient | None
    state: SessionState | None

    def at_boundary(self) -> bool:
        """True when no turn is in progress (no response, no unanswered caller turn)."""
        ...

    def history_marker(self) -> Hashable:
        """A value that changes whenever the history does."""
        ...


class Rollover:
    """Rolls one call's model session over before its deadline (a task per call)."""

    def __init__(self, call: Conversation) -> None:
        self.call = call
        self.boundary = asyncio.Event()  # set whenever the call may be at a turn boundary
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        """Watch the call's model sessions until the call is released."""
        self._task = asyncio.create_task(self._run(), name="model-rollover")

    async def stop(self) -> None:
        """Stop watching (the call ended or left)."""
        task, self._task = self._task, None
        if task is not None and task is not asyncio.current_task():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while not self.call.closed and self.call.model is not None:
            deadline = self.call.model.session_deadline_s
            window_s = min(ROLLOVER_WINDOW_S, (deadline - loop.time()) * ROLLOVER_WINDOW_FRACTION)
            await asyncio.sleep(max(0.0, deadline - window_s - loop.time()))
            while not self.call.closed and self.call.model.session_deadline_s == deadline:
                try:
                    await self._roll(deadline)
                except ModelRefused:
                    return  # the client reports it; the call ends
                except ModelUnavailable as exc:
                    log.warning("call %s: preparing a new model session failed (%s); trying "
                                "again in %.0f s", self._cid, exc, RETRY_S)  # fmt: skip
                    await asyncio.sleep(RETRY_S)
                else:
                    break  # rolled over: watch the new session's deadline

    async def _roll(self, deadline: float) -> None:
        """Prepare a new session at a boundary and switch to it (at the deadline, anyway)."""
        model = self.call.model
        assert model is not None
        while True:
            at_boundary = await self._wait_boundary(deadline)
            marker = self.call.history_marker()
            prepared = await model.prepare_rollover()
            moved_on = self.call.history_marker() != marker or not self.call.at_boundary()
            if at_boundary and moved_on and asyncio.get_running_loop().time() < deadline:
                await model.discard(prepared)  # a turn came meanwhile: its history is stale
                continue
            if not at_boundary or moved_on:
                log.warning("call %s: no turn boundary before the model session's deadline; "
                            "rolling over mid-turn", self._cid)  # fmt: skip
            await model.roll_over(prepared)
            return

    async def _wait_boundary(self, deadline: float) -> bool:
        """Until the call is at a turn boundary (True) or the deadline passes (False)."""
        loop = asyncio.get_running_loop()
        while not self.call.at_boundary():
            self.boundary.clear()
            left = deadline - loop.time()
            if left <= 0:
                return False
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.boundary.wait(), left)
        return True

    @property
    def _cid(self) -> str | None:
        return self.call.state.conversation_id if self.call.state else None
