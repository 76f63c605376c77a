"""The realtime-model client against the simulator: setup, turns, history replay, reconnects."""

from __future__ import annotations

import asyncio
import base64
import json
import socket
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest

from bridges.errors import ModelUnavailable
from bridges.realtime import (
    RESUME_ANCHOR,
    RealtimeClient,
    RealtimeConfig,
    history_items,
    session_update_event,
)
from bridges.simulator import RealtimeSimulator, SimConnection
from bridges.speech import speech_frames, transcribe
from sessions.settings import Settings

TOOL = {
    "type": "function",
    "name": "lookup_account",
    "description": "Look up an account by its number",
    "parameters": {"type": "object", "properties": {"account_id": {"type": "string"}}},
}
HISTORY = [
    {"role": "user", "content": "9123", "timestamp": "2025-01-01T10:00:00+00:00"},
    {"role": "assistant", "content": "ok done", "timestamp": "2025-01-01T10:00:05+00:00"},
    {"role": "user", "content": "44", "timestamp": "2025-01-01T10:00:09Z"},
]
CALLS = [
    {
        "call_id": "call_a",
        "name": "lookup_account",
        "arguments": {"account_id": "123"},
        "result": {"balance": 12},
        "timestamp": "2025-01-01T10:00:02+00:00",
    }
]


class Recorder:
    """An `on_event` that keeps every event and lets a test await the ones it needs."""

    def __init__(self) -> None:
        self.events: list[dict[str, Any]] = []
        self._changed = asyncio.Condition()

    async def __call__(self, event: dict[str, Any]) -> None:
        async with self._changed:
            self.events.append(event)
            self._changed.notify_all()

    def of(self, event_type: str) -> list[dict[str, Any]]:
        """Every event of one type so far."""
        return [e for e in self.events if e["type"] == event_type]

    async def wait(self, event_type: str, count: int = 1, timeout_s: float = 5.0) -> dict[str, Any]:
        """The `count`-th event of `event_type`, once it has arrived."""
        async with self._changed:
            await asyncio.wait_for(
                self._changed.wait_for(lambda: len(self.of(event_type)) >= count), timeout_s
            )
        return self.of(event_type)[count - 1]


def received(connection: SimConnection, event_type: str) -> list[dict[str, Any]]:
    """The client events of one type a simulator connection received."""
    return [e for e in connection.received if e.get("type") == event_type]


@pytest.fixture
async def sim() -> AsyncIterator[RealtimeSimulator]:
    async with RealtimeSimulator() as simulator:
        yield simulator


@pytest.fixture
def recorder() -> Recorder:
    return Recorder()


def closed_port_url() -> str:
    """A ws:// URL on a local port nothing listens on."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    return f"ws://127.0.0.1:{port}/v1/realtime"


async def test_connecting_sets_the_session_up_with_tools_formats_and_credentials(
    sim: RealtimeSimulator, recorder: Recorder
) -> None:
    formats = {"input_audio_format": "g711_ulaw", "output_audio_format": "g711_ulaw"}
    config = RealtimeConfig(url=sim.url, api_key="sk-test", model="m1", tools=[TOOL], **formats)
    async with RealtimeClient(config, recorder) as client:
        assert client.session_id == "sess_1"
        updated = await recorder.wait("session.updated")
    assert recorder.events[0]["type"] == "session.created"
    assert updated["session"]["tools"] == [TOOL]
    assert updated["session"]["input_audio_format"] == "g711_ulaw"
    connection = sim.connections[0]
    assert connection.authorized and connection.model == "m1"
    assert received(connection, "session.update") == [session_update_event(config)]
    assert connection.config["input_audio_transcription"] == {"model": "whisper-1"}


async def test_a_spoken_turn_comes_back_as_transcription_and_a_response(
    sim: RealtimeSimulator, recorder: Recorder
) -> None:
    async with RealtimeClient(RealtimeConfig(url=sim.url), recorder) as client:
        for frame in speech_frames("31", "raw/lpcm16_24"):
            await client.append_audio(frame)
        heard = await recorder.wait("conversation.item.input_audio_transcription.completed")
        done = await recorder.wait("response.done")
    assert heard["transcript"] == "31"
    assert recorder.of("response.audio_transcript.done")[0]["transcript"] == "you said 31"
    audio = b"".join(base64.b64decode(e["delta"]) for e in recorder.of("response.audio.delta"))
    assert transcribe(audio) == "31"
    assert done["response"]["status"] == "completed"
    assert client.dropped_audio_frames == 0


def test_history_items_replay_turns_and_calls_in_time_order_after_an_anchor() -> None:
    items = [event["item"] for event in history_items(HISTORY, CALLS)]
    assert all(e["type"] == "conversation.item.create" for e in history_items(HISTORY, CALLS))
    assert items[0] == {
        "type": "message",
        "role": "system",
        "content": [{"type": "input_text", "text": RESUME_ANCHOR}],
    }
    assert items[1:] == [
        {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "9123"}]},
        {
            "type": "function_call",
            "call_id": "call_a",
            "name": "lookup_account",
            "arguments": '{"account_id": "123"}',
        },
        {"type": "function_call_output", "call_id": "call_a", "output": '{"balance": 12}'},
        {"type": "message", "role": "assistant", "content": [{"type": "text", "text": "ok done"}]},
        {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "44"}]},
    ]


def test_history_items_tolerate_missing_and_odd_fields() -> None:
    history: list[dict[str, Any]] = [
        {"role": "user", "content": "1"},
        {"role": "assistant"},
        {"role": "system", "content": "internal"},
        {"content": "no role"},
    ]
    calls: list[dict[str, Any]] = [{"name": "f", "arguments": '{"a": 1}', "result": "fine"}, {}]
    items = [event["item"] for event in history_items(history, calls)]
    assert [i["type"] for i in items] == [
        "message",
        "message",
        "function_call",
        "function_call_output",
        "function_call",
        "function_call_output",
    ]
    assert items[2]["arguments"] == '{"a": 1}' and items[3]["output"] == "fine"
    assert items[4]["call_id"] == items[5]["call_id"] and items[5]["output"] == "null"
    assert history_items([], []) == []


async def test_an_expired_session_is_replaced_and_the_history_replayed(
    sim: RealtimeSimulator, recorder: Recorder
) -> None:
    config = RealtimeConfig(url=sim.url, tools=[TOOL], turn_detection=None)
    client = RealtimeClient(config, recorder, lambda: history_items(HISTORY, CALLS), backoff_s=0.01)
    async with client:
        await sim.wait_for(lambda s: bool(received(s.connections[0], "session.update")))
        await sim.drop_connections()
        await client.send({"type": "response.create"})
        reconnected = await recorder.wait("client.reconnected")
        answer = await recorder.wait("response.audio_transcript.done")
    assert reconnected == {"type": "client.reconnected", "session_id": "sess_2", "replayed": 6}
    assert client.reconnects == 1 and client.session_id == "sess_2"
    new = sim.connections[1]
    types = new.received_types()
    assert types == ["session.update"] + ["conversation.item.create"] * 6 + ["response.create"]
    assert [i["type"] for i in new.items][1:4] == [
        "message",
        "function_call",
        "function_call_output",
    ]
    assert new.config["tools"] == [TOOL] and new.config["turn_detection"] is None
    assert answer["transcript"] == "you said 44"
    assert [e["type"] for e in recorder.events].count("session.created") == 2


async def test_when_every_reconnect_fails_the_client_reports_and_refuses(
    sim: RealtimeSimulator, recorder: Recorder
) -> None:
    client = RealtimeClient(
        RealtimeConfig(url=sim.url), recorder, reconnect_attempts=2, backoff_s=0.01
    )
    await client.connect()
    await sim.stop()
    failed = await recorder.wait("client.failed")
    assert "unavailable" in failed["error"]
    with pytest.raises(ModelUnavailable):
        await client.send({"type": "response.create"})
    with pytest.raises(ModelUnavailable):
        await client.append_audio(bytes(960))
    await client.close()


async def test_an_explicit_close_does_not_reconnect(
    sim: RealtimeSimulator, recorder: Recorder
) -> None:
    client = RealtimeClient(RealtimeConfig(url=sim.url), recorder)
    await client.connect()
    await client.close()
    await sim.wait_for(lambda s: s.connections[0].closed)
    assert len(sim.connections) == 1 and not client.connected
    with pytest.raises(ModelUnavailable, match="closed"):
        await client.send({"type": "response.create"})
    assert not recorder.of("client.reconnected")


async def test_an_unreachable_model_fails_fast_without_leaking_the_key(recorder: Recorder) -> None:
    url = closed_port_url()
    client = RealtimeClient(RealtimeConfig(url=url, api_key="sk-secret"), recorder)
    started = time.monotonic()
    with pytest.raises(ModelUnavailable) as failure:
        await client.connect()
    assert time.monotonic() - started < 2
    assert url in str(failure.value) and "sk-secret" not in str(failure.value)
    assert "sk-secret" not in repr(client.config)


async def test_a_failing_event_handler_does_not_stop_the_events(sim: RealtimeSimulator) -> None:
    seen: list[str] = []
    done = asyncio.Event()

    async def on_event(event: dict[str, Any]) -> None:
        seen.append(event["type"])
        if event["type"] == "response.done":
            done.set()
        raise RuntimeError("handler bug")

    async with RealtimeClient(RealtimeConfig(url=sim.url), on_event) as client:
        await client.send({"type": "response.create"})
        await asyncio.wait_for(done.wait(), 5)
    assert seen[:2] == ["session.created", "session.updated"]


async def spoken_turn_events(
    sim: RealtimeSimulator, inline: frozenset[str]
) -> list[tuple[str, str]]:
    """(event type, task that handled it) for one spoken turn; other handlers yield a while."""
    seen: list[tuple[str, str]] = []
    done = asyncio.Event()

    async def on_event(event: dict[str, Any]) -> None:
        task = asyncio.current_task()
        seen.append((event["type"], task.get_name() if task else ""))
        if event["type"] == "response.created":
            for _ in range(5):
                await asyncio.sleep(0)  # a handler that awaits, so later events queue behind it
        if event["type"] == "response.done":
            done.set()

    config = RealtimeConfig(url=sim.url)
    async with RealtimeClient(config, on_event, inline_events=inline) as client:
        for frame in speech_frames("4242", "raw/lpcm16_24"):
            await client.append_audio(frame)
        await asyncio.wait_for(done.wait(), 5)
    return seen


async def test_caller_only_events_skip_the_queue_without_reordering_anything() -> None:
    async with RealtimeSimulator(pace=True, delta_ms=20) as sim:  # deltas spaced as in a call
        queued = await spoken_turn_events(sim, frozenset())
        inline = await spoken_turn_events(sim, frozenset({"response.audio.delta"}))
    assert [kind for kind, _ in inline] == [kind for kind, _ in queued]
    deltas = [task for kind, task in inline if kind == "response.audio.delta"]
    assert "realtime-reader" in deltas
    assert {task for kind, task in queued} == {"realtime-dispatcher"}


def test_the_config_comes_from_settings_with_overrides() -> None:
    settings = Settings(
        openai_api_key="sk-from-env",
        openai_realtime_url="ws://127.0.0.1:9/v1/realtime",
        openai_voice="verse",
        bot_instructions="Be brief.",
    )
    config = RealtimeConfig.from_settings(settings, tools=[TOOL], model="other")
    assert config.api_key == "sk-from-env" and config.voice == "verse"
    assert config.instructions == "Be brief." and config.model == "other"
    assert config.endpoint == "ws://127.0.0.1:9/v1/realtime?model=other"
    session = session_update_event(config)["session"]
    assert session["tools"] == [TOOL] and session["turn_detection"] == {"type": "server_vad"}
    assert json.dumps(session)
