"""Reaching the bridge instance that holds a live call, to hang it up (operators, callbacks).

The stored session names its holder (`session_id`: the bridge instance that created or last
claimed it). A request goes to that instance only: over Redis pub/sub on the instance's own
channel when sessions are in Redis, or through this process's registry on the embedded
default. The bridge answers on the requester's reply channel whether it held the call and
hung it up; without an answer within the timeout, the call was not reached.

Pub/sub fits: a request is only useful while the holder is alive and subscribed (a dead
holder cannot hang up anything, and the caller then gets the storage end), it needs no
polling, and its latency is one Redis round trip.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
from collections.abc import Awaitable, Callable
from typing import Any, Literal, Protocol

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator
from redis.asyncio import Redis

from sessions.keys import KeySpace, check_conversation_id

log = logging.getLogger(__name__)
REPLY_TIMEOUT_S = 2.0
HangUp = Callable[[str, str], Awaitable[bool]]


class ControlRequest(BaseModel):
    """A request to a bridge instance, as it travels on its channel (JSON)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    op: Literal["hang_up"] = "hang_up"
    conversation_id: str
    reason: str = Field(max_length=200)
    reply_to: str | None = Field(default=None, max_length=200)

    @field_validator("conversation_id")
    @classmethod
    def _safe_id(cls, value: str) -> str:
        return check_conversation_id(value)


class ControlReply(BaseModel):
    """A bridge's answer: whether it held the call and hung it up."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    conversation_id: str
    instance: str
    hung_up: bool


def parse_request(data: str | bytes) -> ControlRequest | None:
    """A request from a channel, or None (logged) when it is not one."""
    try:
        return ControlRequest.model_validate_json(data)
    except (ValidationError, ValueError):
        log.warning("ignoring a malformed control request (%d bytes)", len(data))
        return None


class CallControl(Protocol):
    """Asks the holder of a live call to hang it up; True when it did."""

    async def hang_up(self, holder: str, conversation_id: str, reason: str) -> bool: ...


class LocalCallControl:
    """The bridge runtimes of this process, by instance id (the embedded default)."""

    def __init__(self) -> None:
        self._handlers: dict[str, HangUp] = {}

    def register(self, instance_id: str, handler: HangUp) -> None:
        """Route requests for `instance_id` to `handler(conversation_id, reason)`."""
        self._handlers[instance_id] = handler

    def unregister(self, instance_id: str) -> None:
        """Forget an instance that stopped."""
        self._handlers.pop(instance_id, None)

    async def hang_up(self, holder: str, conversation_id: str, reason: str) -> bool:
        handler = self._handlers.get(holder)
        return handler is not None and await handler(conversation_id, reason)


LOCAL = LocalCallControl()  # every bridge runtime of this process registers here


class RedisCallControl:
    """Requests over the holder's pub/sub channel; the answer on a channel of our own."""

    def __init__(self, client: Redis, keys: KeySpace, reply_timeout_s: float = REPLY_TIMEOUT_S):
        self.client = client
        self.keys = keys
        self.reply_timeout_s = reply_timeout_s

    async def hang_up(self, holder: str, conversation_id: str, reason: str) -> bool:
        reply_to = self.keys.control_reply(secrets.token_hex(8))
        request = ControlRequest(conversation_id=conversation_id, reason=reason[:200],
                                 reply_to=reply_to)  # fmt: skip
        pubsub = self.client.pubsub()
        try:
            await pubsub.subscribe(reply_to)
            if not await self.client.publish(self.keys.control(holder), request.model_dump_json()):
                return False  # nobody listens on that instance's channel: it is gone
            reply = await _first_reply(pubsub, self.reply_timeout_s)
        finally:
            with contextlib.suppress(Exception):
                await pubsub.aclose()  # type: ignore[no-untyped-call]
        return reply is not None and reply.hung_up


async def _first_reply(pubsub: Any, timeout_s: float) -> ControlReply | None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while (left := deadline - loop.time()) > 0:
        message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=left)
        if message is None or message.get("type") != "message":
            continue
        try:
            return ControlReply.model_validate_json(message["data"])
        except (ValidationError, ValueError):
            continue
    return None
