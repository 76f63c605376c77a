"""The realtime-model client: one GA Realtime session per call, reconnected transparently.

Server events reach the bridge through `on_event`, one at a time and in order, from a single
dispatcher task fed by the reader, so `on_event` may await `send` even during a reconnect.
Event types named in `inline_events` (the bridge's promise that their handling never waits
on the model, e.g. audio deltas that only go to the caller) are handled by the reader itself
whenever nothing is queued or being handled: no hop through the queue, in the same order.

Opening a session means: the handshake (no beta header), `session.created`, the GA
`session.update`, and its `session.updated` (or the error that refuses it). When the server
ends the session (sessions live at most 60 minutes on OpenAI, 30 on Azure) the client opens
a new one, replays the bridge's history, then reports `client.reconnected`; when it cannot,
or the model refuses the session (credentials, quota, a setting), it reports `client.failed`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus, InvalidURI

from bridges.audio import to_base64
from bridges.errors import ModelRefused, ModelUnavailable
from bridges.model.config import RealtimeConfig, session_update_event
from bridges.model.events import (
    CLIENT_FAILED,
    CLIENT_RECONNECTED,
    CLIENT_ROLLED_OVER,
    ERROR,
    SESSION_CREATED,
    SESSION_UPDATED,
    SessionInfo,
    parse,
    server_error,
)
from bridges.model.reconnect import reconnect_policy
from bridges.model.refusals import is_refusal, refusal_for_error, refusal_for_status

log = logging.getLogger(__name__)

EventHandler = Callable[[dict[str, Any]], Awaitable[None]]
HistorySource = Callable[[], list[dict[str, Any]]]
Event = dict[str, Any]

MAX_MESSAGE_BYTES = 16 * 1024 * 1024
MAX_BACKOFF_S = 5.0
EXPIRY_MARGIN_S = 30.0  # roll over this long before the deadline the server announced,
EXPIRY_MARGIN_FRACTION = 0.1  # or this part of the announced lifetime, if less


@dataclass
class OpenSession:
    """A model session that is set up: its connection, set-up events and what it said."""

    ws: ClientConnection
    setup: list[Event]
    info: SessionInfo
    opened_s: float  # loop time
    opened_wall_s: float  # epoch seconds
    replayed: int = 0

    def deadline_s(self, max_s: float) -> float:
        """When (loop time) the session must be replaced: its age cap, or a margin before the
        end the server announced (ignored when it is not in the future by this host's clock)."""
        deadline = self.opened_s + max_s
        lifetime_s = (self.info.expires_at or 0) - self.opened_wall_s
        if lifetime_s > 0:
            margin_s = min(EXPIRY_MARGIN_S, lifetime_s * EXPIRY_MARGIN_FRACTION)
            deadline = min(deadline, self.opened_s + lifetime_s - margin_s)
        return deadline


class RealtimeClient:
    """A realtime-model connection that survives the server ending its session."""

    def __init__(
        self,
        config: RealtimeConfig,
        on_event: EventHandler,
        replay: HistorySource | None = None,
        *,
        inline_events: frozenset[str] = frozenset(),
        reconnect_attempts: int = 5,
        backoff_s: float = 0.2,
        open_timeout_s: float = 10.0,
    ) -> None:
        self.config = config
        self.reconnect_attempts = reconnect_attempts
        self.backoff_s = backoff_s
        self.open_timeout_s = open_timeout_s
        self.session_id: str | None = None
        self.expires_at: int | None = None  # the current session's deadline (epoch seconds)
        self.sessions_opened = 0
        self.dropped_audio_frames = 0
        self.reconnects = 0
        self.rollovers = 0
        self.session_deadline_s = float("inf")  # when the session must have rolled over (loop)
        self.event_received_s = 0.0  # when the event being handled arrived (perf_counter)
        self._on_event = on_event
        self._replay = replay
        self._inline_events = inline_events
        self._handling = False
        self._ws: ClientConnection | None = None
        self._ready = asyncio.Event()
        self._send_lock = asyncio.Lock()
        self._events: asyncio.Queue[tuple[Event, float]] = asyncio.Queue()
        self._tasks: list[asyncio.Task[None]] = []
        self._closing = False
        self._failure: ModelUnavailable | ModelRefused | None = None

    @property
    def connected(self) -> bool:
        """True while a session is open and usable."""
        return self._ws is not None and self._ready.is_set() and not self._closing

    async def connect(self) -> None:
        """Open the session and start handing server events to `on_event`.

        ModelRefused when the model refuses it (naming the setting to fix), ModelUnavailable
        when it cannot be reached.
        """
        self._adopt(await self._open())
        self._ready.set()
        self._tasks = [
            asyncio.create_task(self._read(), name="realtime-reader"),
            asyncio.create_task(self._dispatch(), name="realtime-dispatcher"),
        ]

    async def send(self, event: Event) -> None:
        """Send a client event, waiting through a reconnect; ModelUnavailable once it failed."""
        text = json.dumps(event)
        while True:
            ws = await self._connection()
            try:
                async with self._send_lock:
                    await ws.send(text)
                return
            except ConnectionClosed:
                if self._ws is ws:
                    self._ready.clear()

    async def append_audio(self, audio: bytes) -> None:
        """Append audio in the input format; dropped (and counted) while reconnecting."""
        self._check_usable()
        if self._ws is None or not self._ready.is_set():
            self.dropped_audio_frames += 1
            return
        message = '{"type":"input_audio_buffer.append","audio":"' + to_base64(audio) + '"}'

        try:
            async with self._send_lock:  # the session in use when the frame's turn comes
                if self._ws is None:
                    self.dropped_audio_frames += 1
                    return
                await self._ws.send(message)
        except ConnectionClosed:
            self.dropped_audio_frames += 1

    async def replay_history(self, items: list[Event]) -> int:
        """Send history items (from `history_items`); returns how many were sent."""
        for item in items:
            await self.send(item)
        return len(items)

    async def close(self) -> None:
        """Close the session for good; no reconnect follows."""
        self._closing = True
        self._ready.set()
        if self._ws is not None:
            await self._ws.close()
        for task in self._tasks:
            if task is not asyncio.current_task():
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task

    async def __aenter__(self) -> RealtimeClient:
        await self.connect()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    def _check_usable(self) -> None:
        if self._failure is not None:
            raise self._failure
        if self._closing:
            raise ModelUnavailable("the realtime client is closed")
        if not self._tasks:
            raise ModelUnavailable("the realtime client is not connected")

    async def _connection(self) -> ClientConnection:
        """The open connection, after any reconnect in progress."""
        while True:
            self._check_usable()
            ws = self._ws
            if ws is not None and self._ready.is_set():
                return ws
            await self._ready.wait()

    # -- opening a session ----------------------------------------------------------------

    async def _open(self) -> OpenSession:
        """A new session, set up: its connection and the events of the set-up, in order."""
        ws = await self._handshake()
        try:
            async with asyncio.timeout(self.open_timeout_s):
                setup, info = await self._set_up(ws)
                return OpenSession(ws, setup, info, asyncio.get_running_loop().time(), time.time())
        except (ConnectionClosed, TimeoutError) as exc:
            await ws.close()
            raise ModelUnavailable(
                f"the realtime model ({self.config.describe()}) closed during set-up: {exc}"
            ) from None
        except (ModelRefused, ModelUnavailable):
            await ws.close()
            raise

    async def _handshake(self) -> ClientConnection:
        try:
            return await connect(
                self.config.endpoint,
                additional_headers=self.config.headers(),
                open_timeout=self.open_timeout_s,
                max_size=MAX_MESSAGE_BYTES,
                compression="deflate" if self.config.deflate else None,
            )
        except InvalidStatus as exc:
            raise self._logged(refusal_for_status(exc.response.status_code, self.config)) from None
        except (OSError, InvalidHandshake, InvalidURI, TimeoutError) as exc:
            where = self.config.describe()
            raise ModelUnavailable(f"cannot reach the realtime model ({where}): {exc}") from None

    async def _set_up(self, ws: ClientConnection) -> tuple[list[Event], SessionInfo]:
        """Read `session.created`, send `session.update`, read up to its `session.updated`."""
        created = await self._next_event(ws)
        if created["type"] != SESSION_CREATED:
            raise ModelUnavailable(
                f"the realtime model ({self.config.describe()}) did not create a session "
                f"(first event: {created['type'][:60]})"
            )
        info = parse(SessionInfo, created.get("session"), SESSION_CREATED) or SessionInfo()
        await ws.send(json.dumps(session_update_event(self.config)))
        setup = [created]
        while setup[-1]["type"] != SESSION_UPDATED:
            setup.append(await self._next_event(ws))
        return setup, info

    def _adopt(self, session: OpenSession) -> None:
        """Make `session` the one in use, and tell the bridge of its set-up."""
        self._ws = session.ws
        self.session_id, self.expires_at = session.info.id, session.info.expires_at
        self.sessions_opened += 1
        self.session_deadline_s = session.deadline_s(self.config.session_max_s)
        for event in session.setup:
            self._deliver(event)

    async def _next_event(self, ws: ClientConnection) -> Event:
        """The next server event of the set-up; an `error` refuses the session."""
        while True:
            event = _parse(await ws.recv())
            if event is None:
                continue
            if event["type"] == ERROR:
                raise self._logged(refusal_for_error(server_error(event), self.config))
            return event

    @staticmethod
    def _logged(error: ModelRefused | ModelUnavailable) -> ModelRefused | ModelUnavailable:
        log.error("%s", error)
        return error

    # -- reading and reconnecting ---------------------------------------------------------

    async def _read(self) -> None:
        """Deliver server events, reconnecting whenever the server ends the session."""
        while self._ws is not None:
            ws = self._ws
            with contextlib.suppress(ConnectionClosed):
                async for raw in ws:
                    received_s = time.perf_counter()
                    event = _parse(raw)
                    if event is None:
                        continue
                    if event["type"] == ERROR and await self._refused(ws, event):
                        return
                    if self._may_inline(event):
                        await self._handle(event, received_s)
                    else:
                        self._deliver(event, received_s)
            if self._closing:
                return
            if ws is not self._ws and self._ws is not None:
                continue  # rolled over: read the new session
            if not await self._reconnect(ws):
                return

    async def _refused(self, ws: ClientConnection, event: Event) -> bool:
        """An `error` that refuses the session ends it for good (True); others are events."""
        error = server_error(event)
        if not is_refusal(error):
            return False
        self._fail(self._logged(refusal_for_error(error, self.config)))
        await ws.close()
        return True

    async def _reconnect(self, old: ClientConnection) -> bool:
        """Open a new session and replay the history; False when every attempt failed."""
        self._ws = None
        self._ready.clear()
        reason = f"closed with {old.close_code} {old.close_reason or ''}".strip()
        log.info("realtime session %s %s; reconnecting", self.session_id, reason)
        try:
            if self.reconnect_attempts < 1:
                raise ModelUnavailable("reconnecting is off (reconnect_attempts=0)")
            policy = reconnect_policy(self.reconnect_attempts, self.backoff_s, MAX_BACKOFF_S, log)
            session = await policy.wraps(self._open_replayed)()
        except ModelRefused as exc:
            self._fail(exc)
            return False
        except ModelUnavailable as exc:
            self._fail(ModelUnavailable(f"the realtime model is unavailable after reconnecting "
                                        f"failed: {exc}"))  # fmt: skip
            return False
        if self._closing:
            await session.ws.close()
            return False
        self.reconnects += 1
        self._adopt(session)
        self._ready.set()
        reconnected = {"session_id": self.session_id, "replayed": session.replayed}
        self._deliver({"type": CLIENT_RECONNECTED, **reconnected})
        return True

    async def _open_replayed(self) -> OpenSession:
        """One reconnect attempt: a new session, given the history."""
        session = await self._open()
        try:
            session.replayed = await self._send_replay(session.ws)
        except ConnectionClosed as exc:
            raise ModelUnavailable(f"the new realtime session closed: {exc}") from None
        return session

    # -- rolling over to a new session before the cap ----------------------------------

    async def prepare_rollover(self) -> OpenSession:
        """A new session, set up and given the history, while the current one goes on."""
        self._check_usable()
        session = await self._open()
        try:
            session.replayed = await self._send_replay(session.ws)
        except ConnectionClosed as exc:
            await session.ws.close()
            raise ModelUnavailable(f"the new realtime session closed: {exc}") from None
        return session

    async def roll_over(self, session: OpenSession) -> None:
        """Switch to a prepared session (audio goes there from now on); close the old one."""
        if self._closing or self._failure is not None:
            await session.ws.close()
            return
        old, previous = self._ws, self.session_id
        async with self._send_lock:
            self._adopt(session)
        self.rollovers += 1
        self._deliver({"type": CLIENT_ROLLED_OVER, "session_id": self.session_id,
                       "previous": previous, "replayed": session.replayed})  # fmt: skip
        if old is not None:
            await old.close()

    @staticmethod
    async def discard(session: OpenSession) -> None:
        """Close a prepared session that will not be used."""
        await session.ws.close()

    async def _send_replay(self, ws: ClientConnection) -> int:
        """Send the bridge's current history into a new session."""
        try:
            items = self._replay() if self._replay is not None else []
        except Exception:
            log.exception("building the history to replay failed; continuing without it")
            items = []
        for item in items:
            await ws.send(json.dumps(item))
        return len(items)

    def _fail(self, failure: ModelUnavailable | ModelRefused) -> None:
        """No session any more: refuse further use and tell the bridge why."""
        self._failure = failure
        self._ready.set()
        setting = failure.setting if isinstance(failure, ModelRefused) else None
        refused = isinstance(failure, ModelRefused)
        self._deliver(
            {
                "type": CLIENT_FAILED,
                "error": str(failure),
                "refused": refused,
                "setting": setting,
            }
        )

    def _deliver(self, event: Event, received_s: float | None = None) -> None:
        """Queue one event for `on_event`, with the time it arrived."""
        self._events.put_nowait((event, received_s or time.perf_counter()))

    def _may_inline(self, event: Event) -> bool:
        """True when the reader may handle `event` itself without reordering anything."""
        return event["type"] in self._inline_events and not self._handling and self._events.empty()

    async def _dispatch(self) -> None:
        """Hand queued events to `on_event` in order (until a handler closes the client)."""
        while not self._closing:
            event, received_s = await self._events.get()
            await self._handle(event, received_s)

    async def _handle(self, event: Event, received_s: float) -> None:
        """One event to `on_event`; its failures are logged, never fatal."""
        self._handling, self.event_received_s = True, received_s
        try:
            await self._on_event(event)
        except Exception:
            log.exception("on_event failed for a %s event", event.get("type"))
        finally:
            self._handling = False


def _parse(raw: str | bytes) -> Event | None:
    """A server event, or None (logged) when the message is not one."""
    try:
        event = json.loads(raw)
    except (ValueError, RecursionError):
        event = None
    if not isinstance(event, dict) or not isinstance(event.get("type"), str):
        log.warning("ignoring a realtime message that is not an event (%d bytes)", len(raw))
        return None
    return event
