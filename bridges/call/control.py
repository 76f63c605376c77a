"""The bridge's end of call control: hang-up requests for the calls this instance holds.

On Redis the runtime subscribes to its own channel (`KeySpace.control`) and answers each
request on the requester's reply channel; on the embedded default it registers with the
process's registry (`sessions.control.LOCAL`). Either way a request ends the live call here:
the caller gets the protocol's hang-up, the model session closes, and the final state (every
turn up to the end) goes out as an end like any other.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from redis.exceptions import RedisError
from tenacity import (
    AsyncRetrying,
    RetryCallState,
    retry_if_exception_type,
    retry_if_result,
    wait_fixed,
)

from sessions.control import ControlReply, ControlRequest, parse_request
from sessions.keys import KeySpace

log = logging.getLogger(__name__)
RETRY_S = 1.0

HangUpHere = Callable[[str, str], Awaitable[bool]]


class ControlListener:
    """Subscribes to this instance's control channel and serves its requests."""

    def __init__(self, client: Any, keys: KeySpace, instance_id: str, hang_up: HangUpHere):
        self.client = client
        self.keys = keys
        self.instance_id = instance_id
        self.hang_up = hang_up
        self._task: asyncio.Task[None] | None = None
        self._subscribed = asyncio.Event()

    async def start(self, timeout_s: float = 2.0) -> None:
        """Subscribe (waiting briefly: a request right after start-up should find us)."""
        self._task = asyncio.create_task(self._listen(), name="control-listener")
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._subscribed.wait(), timeout_s)

    async def stop(self) -> None:
        """Unsubscribe."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _listen(self) -> None:
        """Serve requests; after a Redis outage, subscribe again (every RETRY_S, for ever)."""
        retrying = AsyncRetrying(
            retry=retry_if_exception_type((RedisError, OSError)) | retry_if_result(lambda _: True),
            wait=wait_fixed(RETRY_S),
            before_sleep=self._resubscribing,
        )
        await retrying.wraps(self._subscribed_serve)()

    async def _subscribed_serve(self) -> None:
        """Subscribe and serve requests until the subscription fails (or ends)."""
        pubsub = self.client.pubsub(ignore_subscribe_messages=True)
        try:
            await pubsub.subscribe(self.keys.control(self.instance_id))
            self._subscribed.set()
            async for message in pubsub.listen():
                if message.get("type") == "message":
                    await self._serve(message["data"])
        finally:
            with contextlib.suppress(Exception):
                await pubsub.aclose()

    def _resubscribing(self, tries: RetryCallState) -> None:
        outcome = tries.outcome
        lost = outcome.exception() if outcome is not None and outcome.failed else "it ended"
        log.warning("control channel of %s lost (%s); subscribing again", self.instance_id, lost)

    async def _serve(self, data: str | bytes) -> None:
        request = parse_request(data)
        if request is None:
            return
        hung_up = await self._hang_up(request)
        if request.reply_to and request.reply_to.startswith(self.keys.control_reply_prefix):
            reply = ControlReply(conversation_id=request.conversation_id,
                                 instance=self.instance_id, hung_up=hung_up)  # fmt: skip
            with contextlib.suppress(RedisError, OSError):
                await self.client.publish(request.reply_to, reply.model_dump_json())

    async def _hang_up(self, request: ControlRequest) -> bool:
        try:
            return await self.hang_up(request.conversation_id, request.reason)
        except Exception:
            log.exception("hanging up %s failed", request.conversation_id)
            return False
