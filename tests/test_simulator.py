"""The strict GA simulator over a real WebSocket: it speaks GA, and refuses what GA does not.

A simulator proves only that two pieces of this project agree unless it is itself held to a
reference: every server event here is checked against the `openai` package's models (with
the key check), and the refusals are the ones the real server gives.
"""

from __future__ import annotations

import asyncio
import base64
import json
import sys
from collections.abc import AsyncIterator
from typing import Any

import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from bridges.audio import MediaFormat, mulaw_to_pcm16
from bridges.sim.server import RealtimeSimulator
from bridges.sim.speech import speech_frames, transcribe
from bridges.sim.strict import check_server_event

TOOL = {
    "type": "function",
    "name": "lookup_account",
    "description": "Look up an account",
    "parameters": {"type": "object", "properties": {"account_id": {"type": "string"}}},
}
PCMU = {"type": "audio/pcmu"}


class Peer:
    """A raw GA client that reads server events in order, checks each one and keeps them."""

    def __init__(self, ws: ClientConnection) -> None:
        self.ws = ws
        self.events: list[dict[str, Any]] = []

    async def send(self, event_type: str, **fields: Any) -> None:
        await self.ws.send(json.dumps({"type": event_type, **fields}))

    async def expect(self, event_type: str, timeout_s: float = 5.0) -> dict[str, Any]:
        """Read events until one of `event_type` arrives; every event read must be GA."""
        async with asyncio.timeout(timeout_s):
            while True:
                event: dict[str, Any] = json.loads(await self.ws.recv())
                check_server_event(event)
                self.events.append(event)
                if event["type"] == event_type:
                    return event

    async def speak(self, text: str, fmt: MediaFormat = "raw/lpcm16_24") -> None:
        for frame in speech_frames(text, fmt):
            await self.send("input_audio_buffer.append", audio=base64.b64encode(frame).decode())

    def audio(self, response_id: str) -> bytes:
        deltas = [
            e["delta"]
            for e in self.events
            if e["type"] == "response.output_audio.delta" and e["response_id"] == response_id
        ]
        return b"".join(base64.b64decode(d) for d in deltas)

    def of(self, event_type: str) -> list[dict[str, Any]]:
        return [e for e in self.events if e["type"] == event_type]


def update(**session: Any) -> dict[str, Any]:
    return {"type": "realtime", **session}


@pytest.fixture
async def sim() -> AsyncIterator[RealtimeSimulator]:
    async with RealtimeSimulator() as simulator:
        yield simulator


@pytest.fixture
async def peer(sim: RealtimeSimulator) -> AsyncIterator[Peer]:
    headers = {"Authorization": "Bearer test-key"}
    async with connect(sim.url + "?model=gpt-realtime", additional_headers=headers) as ws:
        client = Peer(ws)
        await client.expect("session.created")
        yield client


async def test_a_whole_ga_conversation_greets_hears_calls_a_tool_and_confirms(
    sim: RealtimeSimulator, peer: Peer
) -> None:
    transcription = {"model": "gpt-4o-mini-transcribe"}
    await peer.send(
        "session.update",
        session=update(
            tools=[TOOL],
            audio={"input": {"transcription": transcription}, "output": {"voice": "cedar"}},
        ),
    )
    updated = (await peer.expect("session.updated"))["session"]
    assert updated["tools"] == [TOOL] and updated["audio"]["output"]["voice"] == "cedar"
    assert updated["audio"]["input"]["turn_detection"]["type"] == "server_vad"

    await peer.send("response.create")
    done = await peer.expect("response.done")
    assert done["response"]["status"] == "completed"
    assert peer.of("response.output_audio_transcript.done")[-1]["transcript"] == "hello"
    assert done["response"]["usage"]["output_token_details"]["audio_tokens"] > 0

    await peer.speak("123")
    started = await peer.expect("input_audio_buffer.speech_started")
    stopped = await peer.expect("input_audio_buffer.speech_stopped")
    assert stopped["item_id"] == started["item_id"]
    heard = await peer.expect("conversation.item.input_audio_transcription.completed")
    assert heard["transcript"] == "123" and heard["item_id"] == started["item_id"]
    assert heard["usage"]["type"] == "tokens" and heard["usage"]["input_tokens"] > 0
    answer = await peer.expect("response.output_audio_transcript.done")
    assert answer["transcript"] == "you said 123"
    done = await peer.expect("response.done")
    assert transcribe(peer.audio(done["response"]["id"])) == "123"

    await peer.speak("9456")
    call = await peer.expect("response.function_call_arguments.done")
    assert call["name"] == "lookup_account"
    assert json.loads(call["arguments"]) == {"account_id": "456"}
    item = (await peer.expect("response.output_item.done"))["item"]
    assert item["type"] == "function_call" and item["call_id"] == call["call_id"]
    await peer.expect("response.done")

    output = {"type": "function_call_output", "call_id": call["call_id"], "output": '{"ok":1}'}
    await peer.send("conversation.item.create", item=output)
    added = await peer.expect("conversation.item.added")
    assert added["item"]["call_id"] == call["call_id"]
    await peer.send("response.create")
    assert (await peer.expect("response.output_audio_transcript.done"))["transcript"] == "ok done"
    assert sim.violations() == []


async def test_mulaw_is_heard_and_spoken_as_audio_pcmu(peer: Peer) -> None:
    audio = {
        "input": {"format": PCMU, "transcription": {"model": "whisper-1"}},
        "output": {"format": PCMU},
    }
    await peer.send("session.update", session=update(audio=audio))
    await peer.expect("session.updated")
    await peer.speak("42", "raw/mulaw")
    heard = await peer.expect("conversation.item.input_audio_transcription.completed")
    assert heard["transcript"] == "42" and heard["usage"]["type"] == "duration"
    done = await peer.expect("response.done")
    spoken = peer.audio(done["response"]["id"])
    assert transcribe(mulaw_to_pcm16(spoken), 8000) == "42"


async def test_without_transcription_configured_no_transcript_is_sent(peer: Peer) -> None:
    await peer.speak("7")
    await peer.expect("response.done")
    assert peer.of("conversation.item.input_audio_transcription.completed") == []


async def test_a_text_only_response_streams_text_events(peer: Peer) -> None:
    await peer.send("response.create", response={"output_modalities": ["text"]})
    done = await peer.expect("response.done")
    assert peer.of("response.output_text.done")[0]["text"] == "hello"
    assert peer.of("response.output_audio.delta") == []
    assert done["response"]["output"][0]["content"][0]["type"] == "output_text"


async def test_manual_commit_transcribes_without_answering(
    sim: RealtimeSimulator, peer: Peer
) -> None:
    audio = {"input": {"turn_detection": None, "transcription": {"model": "gpt-4o-transcribe"}}}
    await peer.send("session.update", session=update(audio=audio))
    assert (await peer.expect("session.updated"))["session"]["audio"]["input"][
        "turn_detection"
    ] is None
    await peer.send("input_audio_buffer.commit")
    assert (await peer.expect("error"))["error"]["code"] == "input_audio_buffer_commit_empty"
    await peer.speak("5 5")
    await peer.send("input_audio_buffer.commit")
    committed = await peer.expect("input_audio_buffer.committed")
    heard = await peer.expect("conversation.item.input_audio_transcription.completed")
    assert heard["transcript"] == "55" and heard["item_id"] == committed["item_id"]
    sent = [e["type"] for e in sim.connections[0].sent]
    assert "input_audio_buffer.speech_started" not in sent and "response.created" not in sent


BETA_AND_WRONG: list[tuple[str, str, str | None]] = [
    (
        '{"type": "session.update", "session": {"modalities": ["audio"], "voice": "alloy"}}',
        "missing_required_parameter",
        "session.type",
    ),
    (
        '{"type": "session.update", "session": {"type": "realtime", "modalities": ["audio"]}}',
        "unknown_parameter",
        "session.modalities",
    ),
    (
        '{"type": "session.update", "session": {"type": "realtime", "input_audio_format": '
        '"pcm16"}}',
        "unknown_parameter",
        "session.input_audio_format",
    ),
    (
        '{"type": "session.update", "session": {"type": "realtime", "audio": {"input": '
        '{"format": {"type": "audio/pcm", "rate": 16000}}}}}',
        "invalid_value",
        "session.audio.input.format.rate",
    ),
    (
        '{"type": "conversation.item.create", "item": {"type": "message", "role": "assistant", '
        '"content": [{"type": "text", "text": "hi"}]}}',
        "invalid_value",
        "item.content.0.type",
    ),
    (
        '{"type": "conversation.item.create", "item": {"type": "function_call_output", '
        '"call_id": "nope", "output": "{}"}}',
        "invalid_value",
        "item.call_id",
    ),
    (
        '{"type": "response.create", "response": {"modalities": ["audio"]}}',
        "unknown_parameter",
        "response.modalities",
    ),
    (
        '{"type": "input_audio_buffer.append", "audio": "AAAA", "extra": 1}',
        "unknown_parameter",
        "extra",
    ),
    ('{"type": "input_audio_buffer.append"}', "missing_required_parameter", "audio"),
    ('{"type": "input_audio_buffer.append", "audio": 5}', "invalid_type", "audio"),
    ('{"type": "input_audio_buffer.append", "audio": "%%%"}', "invalid_value", "audio"),
    ('{"type": "input_audio_buffer.append", "audio": "AA=="}', "invalid_value", "audio"),
    ('{"type": "transcription_session.update", "session": {}}', "invalid_value", "type"),
    (
        '{"type": "conversation.item.truncate", "item_id": "x", "content_index": 0, '
        '"audio_end_ms": 1}',
        "item_not_found",
        "item_id",
    ),
    ('{"type": "response.cancel"}', "response_cancel_not_active", None),
    ("{not json", "invalid_json", None),
    ("[1, 2]", "invalid_json", None),
]


@pytest.mark.parametrize(
    ("raw", "code", "param"), BETA_AND_WRONG, ids=[c[1] for c in BETA_AND_WRONG]
)
async def test_beta_shapes_unknown_keys_and_bad_values_are_refused_as_the_server_does(
    sim: RealtimeSimulator, peer: Peer, raw: str, code: str, param: str | None
) -> None:
    await peer.ws.send(raw)
    error = (await peer.expect("error"))["error"]
    assert (error["type"], error["code"], error["param"]) == ("invalid_request_error", code, param)
    await peer.send("session.update", session=update(instructions="still here"))
    assert (await peer.expect("session.updated"))["session"]["instructions"] == "still here"
    assert len(sim.violations()) == 1


async def test_a_beta_client_is_refused_with_an_error_then_close_4000(
    sim: RealtimeSimulator,
) -> None:
    beta = {"Authorization": "Bearer k", "OpenAI-Beta": "realtime=v1"}
    async with connect(sim.url, additional_headers=beta) as ws:
        error = json.loads(await ws.recv())
        check_server_event(error)
        assert error["type"] == "error" and error["error"]["code"] == "beta_api_shape_disabled"
        with pytest.raises(ConnectionClosed):
            await ws.recv()
    assert ws.close_code == 4000


async def test_one_response_at_a_time_and_truncation_within_the_audio_sent() -> None:
    async with RealtimeSimulator(pace=True, delta_ms=20) as sim, connect(sim.url) as ws:
        peer = Peer(ws)
        await peer.expect("session.created")
        await peer.send("response.create")
        delta = await peer.expect("response.output_audio.delta")
        await peer.send("response.create")
        assert (await peer.expect("error"))["error"][
            "code"
        ] == "conversation_already_has_active_response"
        await peer.send("response.cancel")
        done = await peer.expect("response.done")
        assert done["response"]["status"] == "cancelled"
        assert done["response"]["status_details"]["reason"] == "client_cancelled"
        item = {"item_id": delta["item_id"], "content_index": 0}
        await peer.send("conversation.item.truncate", **item, audio_end_ms=60_000)
        assert (await peer.expect("error"))["error"]["param"] == "audio_end_ms"
        await peer.send("conversation.item.truncate", **item, audio_end_ms=20)
        assert (await peer.expect("conversation.item.truncated"))["audio_end_ms"] == 20

        await peer.send("response.create")
        await peer.expect("response.output_audio.delta")
        await peer.speak("7")
        await peer.expect("input_audio_buffer.speech_started")
        cancelled = await peer.expect("response.done")
        assert cancelled["response"]["status_details"]["reason"] == "turn_detected"
        heard = await peer.expect("response.output_audio_transcript.done")
        assert heard["transcript"] == "you said 7"


async def test_a_session_ends_at_its_cap_with_session_expired() -> None:
    async with RealtimeSimulator(max_session_s=0.2) as sim, connect(sim.url) as ws:
        created = json.loads(await ws.recv())
        assert created["session"]["expires_at"] > 0
        error = json.loads(await ws.recv())
        assert error["error"]["code"] == "session_expired"
        assert "maximum duration" in error["error"]["message"]
        with pytest.raises(ConnectionClosed):
            await ws.recv()


async def test_a_wrong_key_is_refused_at_the_handshake_and_azure_paths_are_served() -> None:
    async with RealtimeSimulator(api_key="sk-right") as sim:
        with pytest.raises(InvalidStatus) as refused:
            async with connect(sim.url, additional_headers={"Authorization": "Bearer sk-wrong"}):
                pass
        assert refused.value.response.status_code == 401
        azure = f"ws://127.0.0.1:{sim.port}/openai/v1/realtime?model=my-deployment"
        async with connect(azure, additional_headers={"api-key": "sk-right"}) as ws:
            assert json.loads(await ws.recv())["session"]["model"] == "my-deployment"
        await sim.wait_for(lambda s: s.connections[-1].closed)
        record = sim.connections[-1]
        assert (record.path, record.auth, record.model) == (
            "/openai/v1/realtime",
            "api-key",
            "my-deployment",
        )
        with pytest.raises(InvalidStatus) as missing:
            async with connect(sim.url.replace("/v1/realtime", "/elsewhere")):
                pass
        assert missing.value.response.status_code == 404


async def test_drop_connections_closes_every_session_without_warning(
    sim: RealtimeSimulator,
) -> None:
    async with connect(sim.url) as first, connect(sim.url) as second:
        await sim.wait_for(lambda s: len(s.connections) == 2)
        await sim.drop_connections()
        for ws in (first, second):
            with pytest.raises(ConnectionClosed):
                while True:
                    await ws.recv()
            assert ws.close_code == 1001
    assert [c.session_id for c in sim.connections] == ["sess_1", "sess_2"]


async def test_the_simulator_module_prints_its_url_and_serves() -> None:
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "bridges.sim", "--port", "0", stdout=asyncio.subprocess.PIPE
    )
    try:
        assert process.stdout is not None
        async with asyncio.timeout(10):
            url = (await process.stdout.readline()).decode().strip()
        assert url.startswith("ws://127.0.0.1:") and url.endswith("/v1/realtime")
        async with connect(url) as ws:
            created = json.loads(await ws.recv())
        check_server_event(created)
        assert created["session"]["type"] == "realtime"
    finally:
        process.terminate()
        await process.wait()
