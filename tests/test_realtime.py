"""The GA realtime client against the strict simulator: set-up, turns, replay, reconnects,
providers and refusals.

Every event the client sends passes the simulator's check against the `openai` package's
models (unknown keys included): each test ends with the simulator's list of refused client
events empty, unless refusing is what it tests.
"""

from __future__ import annotations

import asyncio
import base64
import json
import socket
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest

from bridges.errors import ModelRefused, ModelUnavailable
from bridges.model import RealtimeClient, RealtimeConfig, history_items, session_update_event
from bridges.model.config import azure_url
from bridges.model.history import RESUME_ANCHOR, VOICE_ANCHOR
from bridges.sim.server import RealtimeSimulator, SimConnection
from bridges.sim.speech import speech_frames, transcribe
from sessions.errors import ConfigError
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
        return [e for e in self.events if e["type"] == event_type]

    async def wait(self, event_type: str, count: int = 1, timeout_s: float = 5.0) -> dict[str, Any]:
        """The `count`-th event of `event_type`, once it has arrived."""
        async with self._changed:
            await asyncio.wait_for(
                self._changed.wait_for(lambda: len(self.of(event_type)) >= count), timeout_s
            )
        return self.of(event_type)[count - 1]


@pytest.fixture
async def sim() -> AsyncIterator[RealtimeSimulator]:
    async with RealtimeSimulator() as simulator:
        yield simulator
        assert simulator.violations() == [], "the client sent events the GA protocol refuses"


@pytest.fixture
def recorder() -> Recorder:
    return Recorder()


def closed_port_url() -> str:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    return f"ws://127.0.0.1:{port}/v1/realtime"


def received(connection: SimConnection, event_type: str) -> list[dict[str, Any]]:
    return connection.received_of(event_type)


async def test_connecting_sets_up_a_ga_session_and_waits_until_the_model_took_it(
    sim: RealtimeSimulator, recorder: Recorder
) -> None:
    config = RealtimeConfig(
        url=sim.url,
        api_key="sk-test",
        model="gpt-realtime",
        tools=[TOOL],
        input_format="audio/pcmu",
        output_format="audio/pcmu",
        noise_reduction="far_field",
    )
    async with RealtimeClient(config, recorder) as client:
        assert client.session_id == "sess_1" and client.expires_at is not None
        assert client.sessions_opened == 1
        await recorder.wait("session.updated")
    assert [e["type"] for e in recorder.events[:2]] == ["session.created", "session.updated"]
    connection = sim.connections[0]
    assert connection.auth == "bearer" and connection.model == "gpt-realtime"
    assert received(connection, "session.update") == [session_update_event(config)]
    session = connection.config
    assert session["tools"] == [TOOL] and session["output_modalities"] == ["audio"]
    assert session["audio"]["input"]["format"] == {"type": "audio/pcmu"}
    assert session["audio"]["output"] == {
        "format": {"type": "audio/pcmu"},
        "voice": "marin",
        "speed": 1.0,
    }
    assert session["audio"]["input"]["transcription"] == {"model": "gpt-4o-mini-transcribe"}
    assert session["audio"]["input"]["noise_reduction"] == {"type": "far_field"}


async def test_a_spoken_turn_comes_back_as_transcription_and_a_spoken_response(
    sim: RealtimeSimulator, recorder: Recorder
) -> None:
    async with RealtimeClient(RealtimeConfig(url=sim.url), recorder) as client:
        for frame in speech_frames("31", "raw/lpcm16_24"):
            await client.append_audio(frame)
        heard = await recorder.wait("conversation.item.input_audio_transcription.completed")
        done = await recorder.wait("response.done")
    assert heard["transcript"] == "31"
    assert recorder.of("response.output_audio_transcript.done")[0]["transcript"] == "you said 31"
    deltas = recorder.of("response.output_audio.delta")
    assert transcribe(b"".join(base64.b64decode(e["delta"]) for e in deltas)) == "31"
    assert done["response"]["status"] == "completed" and done["response"]["usage"]["input_tokens"]
    assert client.dropped_audio_frames == 0


def test_history_replays_turns_and_calls_in_time_order_between_two_anchors() -> None:
    events = history_items(HISTORY, CALLS)
    assert {e["type"] for e in events} == {"conversation.item.create"}
    items = [e["item"] for e in events]
    system = [{"type": "input_text", "text": RESUME_ANCHOR}]
    assert items[0] == {"type": "message", "role": "system", "content": system}
    assert items[-1]["content"][0]["text"] == VOICE_ANCHOR
    assert items[1:-1] == [
        {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "9123"}]},
        {
            "type": "function_call",
            "call_id": "call_a",
            "name": "lookup_account",
            "arguments": '{"account_id": "123"}',
        },
        {"type": "function_call_output", "call_id": "call_a", "output": '{"balance": 12}'},
        {
            "type": "message",
            "role": "assistant",
            "content": [{"type": "output_text", "text": "ok done"}],
        },
        {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "44"}]},
    ]


def test_history_tolerates_missing_and_odd_fields() -> None:
    history: list[dict[str, Any]] = [
        {"role": "user", "content": "1"},
        {"role": "assistant"},
        {"role": "system", "content": "internal"},
        {"content": "no role"},
        {"role": "user", "content": "", "kind": "unheard"},
    ]
    calls: list[dict[str, Any]] = [{"name": "f", "arguments": '{"a": 1}', "result": "fine"}, {}]
    items = [event["item"] for event in history_items(history, calls)][1:-1]
    assert [i["type"] for i in items] == [
        "message",
        "function_call",
        "function_call_output",
        "function_call",
        "function_call_output",
    ]
    assert items[1]["arguments"] == '{"a": 1}' and items[2]["output"] == "fine"
    assert items[3]["call_id"] == items[4]["call_id"] and items[4]["output"] == "null"
    assert history_items([], []) == []


async def test_a_dropped_session_is_replaced_and_the_history_replayed(
    sim: RealtimeSimulator, recorder: Recorder
) -> None:
    config = RealtimeConfig(url=sim.url, tools=[TOOL], turn_detection=None)
    client = RealtimeClient(config, recorder, lambda: history_items(HISTORY, CALLS), backoff_s=0.01)
    async with client:
        await sim.drop_connections()
        await client.send({"type": "response.create"})
        reconnected = await recorder.wait("client.reconnected")
        answer = await recorder.wait("response.output_audio_transcript.done")
    assert reconnected == {"type": "client.reconnected", "session_id": "sess_2", "replayed": 7}
    assert client.reconnects == 1 and client.sessions_opened == 2
    new = sim.connections[1]
    assert new.received_types() == (
        ["session.update"] + ["conversation.item.create"] * 7 + ["response.create"]
    )
    assert new.config["tools"] == [TOOL] and new.config["audio"]["input"]["turn_detection"] is None
    assert answer["transcript"] == "you said 44"
    assert [e["type"] for e in recorder.events].count("session.created") == 2


async def test_a_session_at_its_cap_is_rolled_into_a_new_one_with_the_history(
    recorder: Recorder,
) -> None:
    async with RealtimeSimulator(max_session_s=0.3) as sim:
        config = RealtimeConfig(url=sim.url, tools=[TOOL])
        history = lambda: history_items(HISTORY, CALLS)  # noqa: E731
        async with RealtimeClient(config, recorder, history, backoff_s=0.01) as client:
            expired = await recorder.wait("error")
            await recorder.wait("client.reconnected")
        assert expired["error"]["code"] == "session_expired"
        assert client.reconnects >= 1 and len(sim.connections[1].items) == 7
        assert sim.violations() == []


async def test_when_every_reconnect_fails_the_client_reports_and_refuses(
    sim: RealtimeSimulator, recorder: Recorder
) -> None:
    client = RealtimeClient(
        RealtimeConfig(url=sim.url), recorder, reconnect_attempts=2, backoff_s=0.01
    )
    await client.connect()
    await sim.stop()
    failed = await recorder.wait("client.failed")
    assert "unavailable" in failed["error"] and failed["refused"] is False
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
    assert "127.0.0.1" in str(failure.value) and "sk-secret" not in str(failure.value)
    assert "sk-secret" not in repr(client.config)


@pytest.mark.parametrize(
    ("provider", "setting"),
    [("openai", "OPENAI_API_KEY"), ("azure", "AZURE_OPENAI_API_KEY")],
)
async def test_a_refused_handshake_names_the_key_setting_and_never_the_key(
    recorder: Recorder, provider: str, setting: str, caplog: pytest.LogCaptureFixture
) -> None:
    async with RealtimeSimulator(api_key="sk-right") as sim:
        auth = "api-key" if provider == "azure" else "bearer"
        config = RealtimeConfig(provider=provider, url=sim.url, api_key="sk-wrong-1234", auth=auth)  # type: ignore[arg-type]
        with pytest.raises(ModelRefused) as refused:
            await RealtimeClient(config, recorder).connect()
    assert "HTTP 401" in str(refused.value) and setting in str(refused.value)
    assert refused.value.setting is not None and setting in refused.value.setting
    assert "sk-wrong" not in str(refused.value) and "sk-wrong" not in caplog.text
    assert setting in caplog.text


@pytest.mark.parametrize(
    ("code", "param", "setting"),
    [
        ("unknown_parameter", "session.audio.output.voice", "OPENAI_VOICE"),
        ("invalid_value", "session.audio.input.transcription.model", "OPENAI_TRANSCRIPTION_MODEL"),
        ("invalid_api_key", None, "OPENAI_API_KEY"),
        ("model_not_found", "session.model", "OPENAI_REALTIME_MODEL"),
    ],
)
async def test_a_refused_session_update_names_the_setting_behind_it(
    recorder: Recorder, code: str, param: str | None, setting: str
) -> None:
    async with RealtimeSimulator() as sim:
        message = "Incorrect API key provided: sk-abc********wxyz." if "key" in code else "no"
        sim.setup_error = {
            "type": "invalid_request_error",
            "code": code,
            "message": message,
            "param": param,
        }
        with pytest.raises(ModelRefused) as refused:
            await RealtimeClient(RealtimeConfig(url=sim.url), recorder).connect()
    assert refused.value.setting == setting and f"check {setting}" in str(refused.value)
    assert code in str(refused.value) and "sk-abc" not in str(refused.value)


async def test_a_refusal_mid_call_fails_the_client_without_reconnecting(
    sim: RealtimeSimulator, recorder: Recorder
) -> None:
    async with RealtimeClient(RealtimeConfig(url=sim.url), recorder, backoff_s=0.01) as client:
        await sim.send(
            0,
            "error",
            error={
                "type": "insufficient_quota",
                "code": "insufficient_quota",
                "message": "You exceeded your current quota.",
            },
        )
        failed = await recorder.wait("client.failed")
        assert failed["refused"] is True and failed["setting"] == "OPENAI_API_KEY"
        with pytest.raises(ModelRefused):
            await client.send({"type": "response.create"})
    assert len(sim.connections) == 1


async def test_other_errors_mid_call_are_events_and_the_session_goes_on(
    sim: RealtimeSimulator, recorder: Recorder
) -> None:
    async with RealtimeClient(RealtimeConfig(url=sim.url), recorder) as client:
        await sim.send(
            0,
            "error",
            error={"type": "server_error", "code": "server_error", "message": "try again"},
        )
        error = await recorder.wait("error")
        await client.send({"type": "response.create"})
        await recorder.wait("response.done")
    assert error["error"]["code"] == "server_error" and not recorder.of("client.failed")


async def test_azure_is_reached_on_its_ga_v1_path_with_the_api_key_header(
    sim: RealtimeSimulator, recorder: Recorder
) -> None:
    settings = Settings(
        model_provider="azure",
        azure_openai_endpoint=sim.azure_endpoint,
        azure_openai_deployment="my-realtime",
        azure_openai_api_key="az-key",
    )
    config = RealtimeConfig.from_settings(settings)
    assert config.endpoint == f"ws://127.0.0.1:{sim.port}/openai/v1/realtime?model=my-realtime"
    assert config.headers() == {"api-key": "az-key"}
    async with RealtimeClient(config, recorder):
        await recorder.wait("session.updated")
    connection = sim.connections[0]
    assert (connection.path, connection.auth, connection.model) == (
        "/openai/v1/realtime",
        "api-key",
        "my-realtime",
    )


def test_azure_settings_build_the_wss_url_and_an_entra_token_is_a_bearer() -> None:
    assert (
        azure_url("https://res.openai.azure.com") == "wss://res.openai.azure.com/openai/v1/realtime"
    )
    settings = Settings(
        model_provider="azure",
        azure_openai_endpoint="https://res.openai.azure.com/",
        azure_openai_deployment="dep",
        azure_openai_ad_token="entra",
    )
    config = RealtimeConfig.from_settings(settings)
    assert config.headers() == {"Authorization": "Bearer entra"}
    assert config.endpoint == "wss://res.openai.azure.com/openai/v1/realtime?model=dep"
    with pytest.raises(ConfigError, match="AZURE_OPENAI_ENDPOINT and AZURE_OPENAI_DEPLOYMENT"):
        RealtimeConfig.from_settings(Settings(model_provider="azure"))


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

    async with RealtimeClient(RealtimeConfig(url=sim.url), on_event, inline_events=inline) as c:
        for frame in speech_frames("4242", "raw/lpcm16_24"):
            await c.append_audio(frame)
        await asyncio.wait_for(done.wait(), 5)
    return seen


async def test_caller_only_events_skip_the_queue_without_reordering_anything() -> None:
    async with RealtimeSimulator(pace=True, delta_ms=20) as sim:  # deltas spaced as in a call
        queued = await spoken_turn_events(sim, frozenset())
        inline = await spoken_turn_events(sim, frozenset({"response.output_audio.delta"}))
    assert [kind for kind, _ in inline] == [kind for kind, _ in queued]
    deltas = [task for kind, task in inline if kind == "response.output_audio.delta"]
    assert "realtime-reader" in deltas
    assert {task for kind, task in queued} == {"realtime-dispatcher"}


def test_the_config_comes_from_settings_with_overrides() -> None:
    settings = Settings(
        openai_api_key="sk-from-env",
        openai_realtime_url="ws://127.0.0.1:9/v1/realtime",
        openai_voice="cedar",
        bot_instructions="Be brief.",
        openai_transcription_model="",
        model_noise_reduction="off",
    )
    config = RealtimeConfig.from_settings(settings, tools=[TOOL], model="other")
    assert config.api_key is not None and config.api_key.get_secret_value() == "sk-from-env"
    assert config.voice == "cedar" and config.instructions == "Be brief."
    assert config.endpoint == "ws://127.0.0.1:9/v1/realtime?model=other"
    session = session_update_event(config)["session"]
    assert session["tools"] == [TOOL] and session["type"] == "realtime"
    assert session["audio"]["input"]["turn_detection"] == {"type": "server_vad"}
    assert session["audio"]["input"]["transcription"] is None
    assert session["audio"]["input"]["noise_reduction"] is None
    assert json.dumps(session) and "sk-from-env" not in repr(config)
    defaults = RealtimeConfig.from_settings(Settings())
    assert (defaults.model, defaults.voice) == ("gpt-realtime", "marin")
