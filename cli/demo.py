"""`opus-sessions demo`: one scripted call through two bridge instances, printed as a timeline.

It starts the realtime-model simulator and two bridge servers on free ports, plays a call
(greeting, two caller turns, a function call, a DTMF digit), drops the WebSocket, resumes the
call on the second instance, ends it and waits for its archive. On the embedded default
everything runs in this process; with REDIS_URL set the same call runs against Redis and
Celery workers (`--with-worker` starts one in this process).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

from bridges.call.runtime import BridgeRuntime
from bridges.hosting import hosted_bridge
from bridges.sim.server import RealtimeSimulator
from bridges.sim.telephony import AudioCodesClient, Message, TwilioClient
from sessions.redis_ops import redact_url
from sessions.settings import Settings
from sessions.state import SessionState, SessionStatus

AUDIO_TYPES = {"userStream.chunk", "playStream.chunk", "media"}
ARCHIVE_TIMEOUT_S = 30.0
AUDIOCODES, TWILIO = "AudioCodes", "Twilio"  # the telephony side of the call, as actors


class DemoFailed(RuntimeError):
    """The scripted call did not go as expected; the message says where."""


class Timeline:
    """Prints each step with its time; runs of audio frames are folded into one line."""

    def __init__(self, quiet: bool = False) -> None:
        self.quiet = quiet
        self.steps: list[dict[str, Any]] = []
        self._t0 = time.perf_counter()
        self._run: tuple[str, str, str] | None = None
        self._run_count = 0

    def message(self, actor: str, direction: str, message: Message) -> None:
        """A protocol message sent (->) or received (<-) by `actor`."""
        kind = str(message.get("type") or message.get("event"))
        if kind in AUDIO_TYPES:
            key = (actor, direction, kind)
            if self._run != key:
                self._flush()
                self._run = key
            self._run_count += 1
            return
        self._flush()
        self._emit(actor, f"{direction} {kind}", _details(message))

    def note(self, actor: str, what: str, **details: Any) -> None:
        """A step that is not a message."""
        self._flush()
        self._emit(actor, what, details)

    def _flush(self) -> None:
        if self._run is not None:
            actor, direction, kind = self._run
            self._emit(actor, f"{direction} {kind} x{self._run_count}", {"frames": "20 ms"}
                       if kind != "playStream.chunk" else {})  # fmt: skip
            self._run, self._run_count = None, 0

    def _emit(self, actor: str, what: str, details: dict[str, Any]) -> None:
        elapsed_ms = (time.perf_counter() - self._t0) * 1000
        self.steps.append({"t_ms": round(elapsed_ms, 1), "actor": actor, "what": what, **details})
        if not self.quiet:
            extra = "  " + readable(details) if details else ""
            print(f"{elapsed_ms:8.1f} ms  {actor:<10} {what}{extra}", flush=True)


def _details(message: Message) -> dict[str, Any]:
    skip = {"type", "event", "conversationId", "streamSid", "sequenceNumber", "audioChunk"}
    details = {k: v for k, v in message.items() if k not in skip}
    for name in ("start", "stop"):  # Twilio's: only the call they belong to
        if isinstance(details.get(name), dict):
            details[name] = {k: details[name][k] for k in ("callSid",) if k in details[name]}
    if isinstance(details.get("caller"), str):
        details["caller"] = mask_number(details["caller"])
    return details


def readable(details: dict[str, Any]) -> str:
    """A step's details in words: `key=value` pairs, lists joined, caller events named."""
    return ", ".join(_readable(key, value) for key, value in details.items())


def _readable(key: str, value: Any) -> str:
    if key == "activities" and isinstance(value, list):  # AudioCodes: hangup, DTMF, ...
        return ", ".join(_activity(a) if isinstance(a, dict) else _plain(a) for a in value)
    if key == "dtmf":  # Twilio's DTMF event: the digit itself is the caller's
        return "DTMF digit"
    if isinstance(value, dict):  # Twilio nests an event's fields under its name
        return ", ".join(f"{k}={_plain(v)}" for k, v in value.items())
    return f"{key}={_plain(value)}"


def _activity(activity: dict[str, Any]) -> str:
    name = str(activity.get("name") or activity.get("type"))
    return "DTMF digit" if name == "dtmf" else name


def _plain(value: Any) -> str:
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, list | tuple):
        return ",".join(_plain(v) for v in value)
    if isinstance(value, dict):
        return " ".join(f"{k}={_plain(v)}" for k, v in value.items())
    return str(value)


def turn_counts(state: SessionState) -> dict[str, int]:
    """The call in turns: the caller's (speech), the bot's (after its greeting), DTMF digits
    (the caller's events: a DTMF digit is the only one)."""
    counts = dict.fromkeys(("caller_turns", "bot_answers", "greetings", "dtmf_digits"), 0)
    for item in state.conversation_history:
        role, kind = item.get("role"), item.get("kind")
        if role == "user":
            counts["dtmf_digits" if kind == "event" else "caller_turns"] += 1
        elif role == "assistant":
            answering = counts["caller_turns"] or counts["dtmf_digits"]
            counts["bot_answers" if answering else "greetings"] += 1
    return counts


def mask_number(number: str) -> str:
    """A phone number as a log may show it: its first four and last two characters."""
    return number[:4] + "*" * max(0, len(number) - 6) + number[-2:] if len(number) > 6 else "***"


@contextlib.contextmanager
def in_process_worker(settings: Settings) -> Iterator[None]:
    """A Celery worker consuming every queue, in threads of this process."""
    from celery.contrib.testing.worker import start_worker

    import celeryconfig
    from workers.app import app

    app.conf.update(celeryconfig.build(settings))
    with start_worker(app, pool="threads", concurrency=2, perform_ping_check=False,
                      queues=list(celeryconfig.QUEUES), loglevel="WARNING",
                      shutdown_timeout=10):  # fmt: skip
        yield


@contextlib.asynccontextmanager
async def two_bridges(settings: Settings, model_url: str) -> AsyncIterator[
    tuple[tuple[str, str], BridgeRuntime]
]:  # fmt: skip
    """Two bridge instances: one shared runtime on the embedded default, two on Redis."""
    first = BridgeRuntime.build(settings, realtime_url=model_url, schedule=False)
    embedded = settings.storage_backend == "memory"
    second = first if embedded else BridgeRuntime.build(settings, realtime_url=model_url)
    async with (
        hosted_bridge(first, owns_runtime=not embedded) as url_1,
        hosted_bridge(second, owns_runtime=not embedded) as url_2,
    ):
        yield (url_1, url_2), second
    if embedded:
        await first.close()


async def run_demo(settings: Settings, protocol: str = "audiocodes", with_worker: bool = False,
                   quiet: bool = False) -> dict[str, Any]:  # fmt: skip
    """Play the scripted call; return the timeline and what was stored and archived."""
    out = Timeline(quiet)
    worker = in_process_worker(settings) if with_worker else contextlib.nullcontext()
    cid = f"demo-{uuid.uuid4().hex[:8]}"
    mode = (
        "embedded default (memory storage, local executor)"
        if settings.storage_backend == "memory"
        else f"Redis storage, Celery broker {redact_url(settings.broker_url)}"
    )
    out.note("demo", f"{protocol} call {cid} on the {mode}")
    with worker:
        async with RealtimeSimulator() as sim:
            out.note("model", "strict Realtime GA simulator listening", url=sim.url)
            async with two_bridges(settings, sim.url) as ((url_1, url_2), runtime):
                out.note("bridges", "two bridge instances up", first=url_1, second=url_2)
                play = _play_audiocodes if protocol == "audiocodes" else _play_twilio
                await play(out, cid, url_1, url_2, sim)
                state = await _wait_archived(runtime, cid, settings)
                location = _archive_location(settings, cid)
                out.note("archive", "call archived", location=location)
                if sim.violations():
                    raise DemoFailed(f"the model refused client events: {sim.violations()}")
    return {"conversation_id": cid, "protocol": protocol, "archive": location,
            "turns": len(state.conversation_history), **turn_counts(state),
            "resumed_count": state.resumed_count,
            "end_reason": state.end_reason, "model": _model_summary(state),
            "usage": state.usage.counters(), "steps": out.steps}  # fmt: skip


def _model_summary(state: SessionState) -> dict[str, Any]:
    """Provider, model, voice and audio formats the call used (from its stored state)."""
    info = state.realtime
    if info is None:
        return {}
    return {"provider": info.provider, "model": info.model, "voice": info.voice,
            "input_format": info.input_format, "output_format": info.output_format,
            "transcription_model": info.transcription_model,
            "model_sessions": info.sessions}  # fmt: skip


def _note_model(out: Timeline, sim: RealtimeSimulator, telephony: str) -> None:
    """What the model session was set up with, as the model saw it (its session.updated)."""
    config = sim.connections[-1].config
    audio = config["audio"]
    out.note("model", "GA session set up (session.update accepted, no beta header)",
             model=config["model"], voice=audio["output"]["voice"],
             audio_in=audio["input"]["format"]["type"], audio_out=audio["output"]["format"]["type"],
             telephony=telephony,
             transcription=(audio["input"]["transcription"] or {}).get("model"))  # fmt: skip


async def _play_audiocodes(out: Timeline, cid: str, url_1: str, url_2: str,
                           sim: RealtimeSimulator) -> None:  # fmt: skip
    caller = AudioCodesClient(url_1, cid, observer=lambda d, m: out.message(AUDIOCODES, d, m))
    await caller.connect()
    if (await caller.initiate())["type"] != "session.accepted":
        raise DemoFailed(f"session.initiate was refused: {caller.received[-1]}")
    _note_model(out, sim, "raw/lpcm16 (16 kHz PCM, resampled to and from 24 kHz)")
    await caller.expect("playStream.stop")
    for digits in ("123", "9123"):
        await caller.say(digits)
        await caller.expect("playStream.stop")
    await caller.dtmf("5")
    await caller.close()
    out.note(AUDIOCODES, "websocket dropped mid-call; reconnecting to the second instance")
    again = AudioCodesClient(url_2, cid, observer=lambda d, m: out.message(AUDIOCODES, d, m))
    await again.connect()
    if (await again.resume())["type"] != "session.accepted":
        raise DemoFailed(f"session.resume was refused: {again.received[-1]}")
    _note_replay(out, sim)
    await again.say("45")
    await again.expect("playStream.stop")
    await again.hangup()
    await again.closed()


async def _play_twilio(out: Timeline, cid: str, url_1: str, url_2: str,
                       sim: RealtimeSimulator) -> None:  # fmt: skip
    stream = TwilioClient(url_1, cid, "MZ" + uuid.uuid4().hex,
                          observer=lambda d, m: out.message(TWILIO, d, m))  # fmt: skip
    await stream.connect()
    await stream.start({"caller": "+15550100"})
    await stream.expect("mark")
    _note_model(out, sim, "audio/x-mulaw 8 kHz (passed through as audio/pcmu)")
    for digits in ("123", "9123"):
        await stream.say(digits)
        await stream.expect("mark")
    await stream.dtmf("5")
    await stream.close()
    out.note(TWILIO, "stream dropped mid-call; a new <Connect><Stream> reaches the second instance")
    again = TwilioClient(url_2, cid, "MZ" + uuid.uuid4().hex,
                         observer=lambda d, m: out.message(TWILIO, d, m))  # fmt: skip
    await again.connect()
    await again.start({"caller": "+15550100"})
    await sim.wait_for(lambda s: len(s.connections) >= 2 and bool(s.connections[-1].items))
    _note_replay(out, sim)
    await again.say("45")
    await again.expect("mark")
    await again.stop()
    await again.closed()


def _note_replay(out: Timeline, sim: RealtimeSimulator) -> None:
    items = [e["item"] for e in sim.connections[-1].received
             if e.get("type") == "conversation.item.create"]  # fmt: skip
    kinds = [f"{i.get('role', i.get('type'))}" for i in items]
    out.note("bridge-2", "resumed: history replayed into a new model session",
             items=len(items), kinds=",".join(kinds), greeting="not repeated")  # fmt: skip


async def _wait_archived(runtime: BridgeRuntime, cid: str, settings: Settings) -> SessionState:
    deadline = time.monotonic() + ARCHIVE_TIMEOUT_S
    while True:
        await runtime.settle()
        state = await runtime.storage.load(cid)
        if state is not None and state.status is SessionStatus.ENDED and _archived(settings, cid):
            return state
        if time.monotonic() > deadline:
            raise DemoFailed(
                f"call {cid} not archived within {ARCHIVE_TIMEOUT_S:.0f} s; is a worker running? "
                "(`celery -A workers.app worker --loglevel INFO`, or "
                "`opus-sessions demo --with-worker`)"
            )
        await asyncio.sleep(0.05)  # the archive is written by another thread or process


def _archived(settings: Settings, cid: str) -> bool:
    if settings.archive_url:
        from sessions.factory import build_sink

        sink = build_sink(settings)
        try:
            return any(r.conversation_id == cid for r in sink.iter_since(_today()))
        finally:
            sink.close()
    return any(Path(settings.archive_dir).rglob(f"{cid}.json"))


def _today() -> Any:
    from datetime import UTC, datetime

    return datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0)


def _archive_location(settings: Settings, cid: str) -> str:
    if settings.archive_url:
        return f"table {settings.archive_table}, conversation_id={cid}"
    found = next(Path(settings.archive_dir).rglob(f"{cid}.json"), None)
    return str(found) if found else "?"
