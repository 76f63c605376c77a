"""Calls changing hands between bridge instances: leaving, arriving, and waiting to end.

Leaving: when a caller drops (or the instance shuts down, or a Twilio stream stops), the call's
PAUSED state with its whole history is written straight to storage by the same
compare-and-set script the workers use: no worker is needed for a resume elsewhere to see
every turn. The write is bounded in time; if storage does not answer, the persister keeps the
state and sends it the routine way.

Arriving: a resume of a call that another instance still holds ACTIVE first waits (at most
RESUME_HANDOFF_MS) for that instance's hand-off; the holder is named from the call's first
write, so the wait engages from the start of a call.

Waiting to end: a stopped Twilio stream stays PAUSED for a grace window, then is ended unless
a new stream resumed it meanwhile (the end is fenced by epoch).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import time
from dataclasses import dataclass, field

from bridges.call.metrics import BridgeMetrics
from bridges.persist.persister import SessionPersister
from sessions.codec import Snapshot
from sessions.errors import RetryableError
from sessions.state import SessionState, SessionStatus
from sessions.storage import EndOutcome, SessionStorage

log = logging.getLogger(__name__)
HANDOFF_WRITE_TIMEOUT_S = 2.0
HANDOFF_POLL_S = 0.02


@dataclass
class Handover:
    """One bridge instance's side of calls changing hands."""

    storage: SessionStorage
    persister: SessionPersister
    metrics: BridgeMetrics
    instance_id: str
    resume_handoff_ms: int = 1000
    replicas: int = 0  # replicas that must acknowledge the write (WAIT) before it counts
    replica_wait_ms: int = 500
    _grace: dict[str, asyncio.Task[None]] = field(default_factory=dict)

    async def hand_off(self, state: SessionState) -> bool:
        """Store a call that leaves this instance (PAUSED, whole history); False if it failed.

        With `replicas`, the write counts once that many replicas have it: a master that
        fails over right after it cannot take the call's last turns along. Until then (or
        when too few replicas answer in time) the persister keeps the state and sends it the
        routine way as well, which a store that has it already ignores.
        """
        cid = state.conversation_id
        started = time.perf_counter()
        timeout_s = HANDOFF_WRITE_TIMEOUT_S + self.replica_wait_ms / 1000
        try:
            ack = await asyncio.wait_for(
                self.storage.save_durable(Snapshot.of(state), self.replicas, self.replica_wait_ms),
                timeout_s,
            )
        except (RetryableError, TimeoutError) as exc:
            self.metrics.count("handoff_failures")
            log.warning("call %s left %s but its hand-off write failed (%s); the persister "
                        "sends it when storage answers", cid, self.instance_id, exc)  # fmt: skip
            self.persister.save_now(state)
            self.persister.forget(cid, stored=False)
            return False
        applied = ack.applied
        if ack.replicated is not None and ack.replicated < self.replicas:
            self.metrics.count("handoff_unreplicated")
            log.warning("call %s: its hand-off reached %d of %d replicas in %d ms; the "
                        "persister sends it again", cid, ack.replicated, self.replicas,
                        self.replica_wait_ms)  # fmt: skip
            self.persister.save_now(state)
            self.persister.forget(cid, stored=False)
            return True
        self.persister.forget(cid)
        self.metrics.count("handoffs")
        elapsed_ms = (time.perf_counter() - started) * 1000
        taken = "" if applied else "; it was taken over already, so only its history merged"
        log.info("call %s left %s: stored %s with %d turns and %d function calls in %.1f ms%s",
                 cid, self.instance_id, state.status.value, len(state.conversation_history),
                 len(state.function_calls), elapsed_ms, taken)  # fmt: skip
        return True

    async def store_end(self, state: SessionState) -> None:
        """On a replicated store (`replicas`), also write an ended call's final state straight
        to storage and wait for the replicas: the `end_session` task that carries it could be
        lost with a broker that fails over before replicating it, the store's copy then is
        not (the sweep archives it). Failures are logged; the task stays the routine way."""
        if self.replicas <= 0:
            return
        cid = state.conversation_id
        try:
            ack = await asyncio.wait_for(
                self.storage.save_durable(Snapshot.of(state), self.replicas, self.replica_wait_ms),
                HANDOFF_WRITE_TIMEOUT_S + self.replica_wait_ms / 1000,
            )
        except (RetryableError, TimeoutError) as exc:
            log.warning("call %s ended; writing its final state to storage failed (%s); "
                        "the end_session task carries it", cid, exc)  # fmt: skip
            return
        if ack.replicated is not None and ack.replicated < self.replicas:
            self.metrics.count("handoff_unreplicated")
            log.warning("call %s ended; its final state reached %d of %d replicas in %d ms",
                        cid, ack.replicated, self.replicas, self.replica_wait_ms)  # fmt: skip

    async def await_handoff(self, conversation_id: str) -> str | None:
        """Before claiming a call another instance holds ACTIVE, wait for its hand-off.

        Returns the holder that never handed the call over within RESUME_HANDOFF_MS (it
        crashed, or never saw the drop; the claim then fences it out), or None.
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.resume_handoff_ms / 1000
        for attempt in itertools.count():
            holder = await self._holder_elsewhere(conversation_id)
            if holder is None:
                return None
            if loop.time() >= deadline:
                self.metrics.count("resume_handoff_timeouts")
                return holder
            if attempt == 0:
                self.metrics.count("resume_handoff_waits")
            await asyncio.sleep(HANDOFF_POLL_S)
        return None  # unreachable: the loop returns

    async def _holder_elsewhere(self, conversation_id: str) -> str | None:
        """The other instance that holds the call ACTIVE, if any."""
        try:
            state = await self.storage.load(conversation_id)
        except RetryableError:
            return None  # the claim reports the outage
        live = (SessionStatus.INITIATED, SessionStatus.ACTIVE)
        if state is None or state.status not in live or not state.session_id:
            return None
        return None if state.session_id == self.instance_id else state.session_id

    # -- ending a call that waits, or that no bridge here holds --------------------------

    def end_after(self, conversation_id: str, epoch: int, delay_s: float, reason: str) -> None:
        """End a PAUSED call after `delay_s` unless it is resumed (anywhere) before."""
        self.cancel_end(conversation_id)
        task = asyncio.create_task(self._end_later(conversation_id, epoch, delay_s, reason))
        self._grace[conversation_id] = task

    def cancel_end(self, conversation_id: str) -> None:
        """Forget a pending grace end (the call came back here, or ended otherwise)."""
        task = self._grace.pop(conversation_id, None)
        if task is not None:
            task.cancel()

    @property
    def waiting(self) -> int:
        """Calls waiting for their grace end."""
        return len(self._grace)

    async def close(self) -> None:
        """Drop every pending grace end (the sweep ends such calls once they expire)."""
        tasks, self._grace = list(self._grace.values()), {}
        for task in tasks:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def end_stored(
        self, conversation_id: str, reason: str, expected_epoch: int | None = None
    ) -> EndOutcome:
        """End a call that no bridge here holds, in storage, and queue its archive."""
        outcome = await self.storage.end(conversation_id, reason, expected_epoch)
        if outcome is EndOutcome.ENDED:
            self.persister.archive(conversation_id)
        return outcome

    async def _end_later(self, cid: str, epoch: int, delay_s: float, reason: str) -> None:
        try:
            await asyncio.sleep(delay_s)
            outcome = await self.end_stored(cid, reason, expected_epoch=epoch)
            log.info("call %s: grace of %.0f s over: %s", cid, delay_s, outcome.value)
        except RetryableError as exc:
            log.warning("call %s: ending after its grace failed (%s); the expiry sweep will",
                        cid, exc)  # fmt: skip
        finally:
            if self._grace.get(cid) is asyncio.current_task():
                del self._grace[cid]
