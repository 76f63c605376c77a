"""The realtime-model simulator over a real WebSocket: turns, tools, formats, errors, expiry."""

from __future__ import annotations

import asyncio
import base64
import json
import sys
from collections.abc import AsyncIterator
from typing import Any

import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosedOK, InvalidStatus

from bridges.audio import MediaFormat, mulaw_to_pcm16
from bridges.simulator import RealtimeSimulator
from bridges.speech import speech_frames, transcribe

TOOL = {
    "type": "function",
    "name": "lookup_account",
    "description": "Look up an account",
    "parameters": {"type": "object", "properties": {"account_id": {"type": "string"}}},
}


class Peer:
    """A test client that reads server events in order and keeps them."""

    def __init__(self, ws: ClientConnection) -> None:
        self.ws = ws
        self.events: list[dict[str, Any]] = []

    async def send(self, event_type: str, **fields: Any) -> None:
        """Send one client event."""
        await self.ws.send(json.dumps({"type": event_type, **fields}))

    async def expect(self, event_type: str, timeout_s: float = 5.0) -> dict[str, Any]:
        """Read events until one of `event_type` arrives and return it."""
        async with asyncio.timeout(timeout_s):
            while True:
                event: dict[str, Any] = json.loads(await self.ws.recv())
                self.events.append(event)
                if event["type"] == event_type:
                    return event

    async def speak(self, text: str, fmt: MediaFormat = "raw/lpcm16_24") -> None:
        """Append `text` as speech followed by silence, frame by frame."""
        for frame in speech_frames(text, fmt):
            await self.send("input_audio_buffer.append", audio=base64.b64encode(frame).decode())

    def since(self, event_type: str) -> list[dict[str, Any]]:
        """Events read after the last one of `event_type` (inclusive)."""
        last = max(i for i, e in enumerate(self.events) if e["type"] == event_type)
        return self.events[last:]

    def audio(self, response_id: str) -> bytes:
        """The audio of a response, from its deltas."""
        deltas = [
            e["delta"]
            for e in self.events
            if e["type"] == "response.audio.delta" and e["response_id"] == response_id
        ]
        return b"".join(base64.b64decode(d) for d in deltas)


@pytest.fixture
async def sim() -> AsyncIterator[RealtimeSimulator]:
    async with RealtimeSimulator() as simulator:
        yield simulator


@pytest.fixture
async def peer(sim: RealtimeSimulator) -> AsyncIterator[Peer]:
    headers = {"Authorization": "Bearer test-key", "OpenAI-Beta": "realtime=v1"}
    async with connect(sim.url + "?model=sim-model", additional_headers=headers) as ws:
        client = Peer(ws)
        await client.expect("session.created")
        yield client


async def test_a_whole_conversation_greets_hears_calls_a_tool_and_confirms(
    sim: RealtimeSimulator, peer: Peer
) -> None:
    await peer.send("session.update", session={"tools": [TOOL], "voice": "verse"})
    updated = await peer.expect("session.updated")
    assert updated["session"]["tools"] == [TOOL]
    assert updated["session"]["turn_detection"]["type"] == "server_vad"

    await peer.send("response.create")
    done = await peer.expect("response.done")
    assert done["response"]["status"] == "completed"
    transcript = [e for e in peer.events if e["type"] == "response.audio_transcript.done"]
    assert transcript[-1]["transcript"] == "hello"
    assert peer.audio(done["response"]["id"])

    await peer.speak("123")
    started = await peer.expect("input_audio_buffer.speech_started")
    stopped = await peer.expect("input_audio_buffer.speech_stopped")
    assert stopped["item_id"] == started["item_id"]
    assert stopped["audio_end_ms"] - started["audio_start_ms"] == 180
    heard = await peer.expect("conversation.item.input_audio_transcription.completed")
    assert heard["transcript"] == "123"
    assert heard["item_id"] == started["item_id"]
    answer = await peer.expect("response.audio_transcript.done")
    assert answer["transcript"] == "you said 123"
    done = await peer.expect("response.done")
    assert transcribe(peer.audio(done["response"]["id"])) == "123"

    await peer.speak("9456")
    call = await peer.expect("response.function_call_arguments.done")
    assert call["name"] == "lookup_account"
    assert json.loads(call["arguments"]) == {"account_id": "456"}
    added = [e for e in peer.since("response.output_item.added")][0]
    assert added["item"]["call_id"] == call["call_id"] == "call_1"
    assert (await peer.expect("response.done"))["response"]["output"][0]["type"] == "function_call"

    output = {"type": "function_call_output", "call_id": call["call_id"], "output": '{"ok":1}'}
    await peer.send("conversation.item.create", item=output)
    created = await peer.expect("conversation.item.created")
    assert created["item"]["call_id"] == "call_1"
    await peer.send("response.create")
    assert (await peer.expect("response.audio_transcript.done"))["transcript"] == "ok done"

    record = sim.connections[0]
    assert record.authorized and record.model == "sim-model" and record.session_id == "sess_1"
    assert record.items == [{**output, "id": created["item"]["id"]}]
    appends = [e for e in record.received if e["type"] == "input_audio_buffer.append"]
    assert {e["audio"] for e in appends} == {960}


async def test_the_simulator_speaks_and_hears_g711_ulaw(peer: Peer) -> None:
    formats = {"input_audio_format": "g711_ulaw", "output_audio_format": "g711_ulaw"}
    await peer.send("session.update", session={**formats, "turn_detection": {"type": "server_vad"}})
    await peer.expect("session.updated")
    await peer.speak("42", "raw/mulaw")
    assert (await peer.expect("conversation.item.input_audio_transcription.completed"))[
        "transcript"
    ] == "42"
    done = await peer.expect("response.done")
    audio = peer.audio(done["response"]["id"])
    assert len(audio) == 2 * 480
    assert transcribe(mulaw_to_pcm16(audio), 8000) == "42"


async def test_manual_commit_transcribes_without_answering(
    sim: RealtimeSimulator, peer: Peer
) -> None:
    await peer.send("session.update", session={"turn_detection": None})
    assert (await peer.expect("session.updated"))["session"]["turn_detection"] is None
    await peer.send("input_audio_buffer.commit")
    assert (await peer.expect("error"))["error"]["code"] == "input_audio_buffer_commit_empty"

    await peer.speak("5 5")
    await peer.send("input_audio_buffer.commit")
    committed = await peer.expect("input_audio_buffer.committed")
    heard = await peer.expect("conversation.item.input_audio_transcription.completed")
    assert heard["transcript"] == "55" and heard["item_id"] == committed["item_id"]
    await peer.send("input_audio_buffer.clear")
    await peer.expect("input_audio_buffer.cleared")
    sent = [e["type"] for e in sim.connections[0].sent]
    assert "input_audio_buffer.speech_started" not in sent
    assert "response.created" not in sent


async def test_bad_client_events_get_errors_and_the_connection_survives(peer: Peer) -> None:
    bad: list[tuple[str, str]] = [
        ("{not json", "invalid_json"),
        ("[1, 2]", "invalid_json"),
        ('{"event_id": "x"}', "missing_type"),
        ('{"type": 7}', "missing_type"),
        ('{"type": "session.explode"}', "unknown_event_type"),
        ('{"type": "session.update", "session": "x"}', "invalid_type"),
        ('{"type": "session.update", "session": {"input_audio_format": "mp3"}}', "invalid_value"),
        (
            '{"type": "session.update", "session": {"turn_detection": {"type": "x"}}}',
            "invalid_value",
        ),
        ('{"type": "input_audio_buffer.append", "audio": 5}', "invalid_type"),
        ('{"type": "input_audio_buffer.append", "audio": "%%%"}', "invalid_audio"),
        ('{"type": "input_audio_buffer.append", "audio": "AAAA"}', "invalid_audio"),
        ('{"type": "conversation.item.create", "item": {"type": "photo"}}', "invalid_value"),
        ('{"type": "conversation.item.truncate", "item_id": "x"}', "invalid_type"),
        ('{"type": "response.cancel"}', "response_cancel_not_active"),
    ]
    for raw, code in bad:
        await peer.ws.send(raw)
        error = await peer.expect("error")
        assert error["error"]["type"] == "invalid_request_error"
        assert error["error"]["code"] == code, raw
    await peer.send("session.update", session={"voice": "ash"})
    assert (await peer.expect("session.updated"))["session"]["voice"] == "ash"


async def test_cancel_and_barge_in_stop_a_paced_response() -> None:
    async with RealtimeSimulator(pace=True, delta_ms=20) as sim, connect(sim.url) as ws:
        peer = Peer(ws)
        await peer.expect("session.created")
        await peer.send("response.create")
        delta = await peer.expect("response.audio.delta")
        await peer.send("response.cancel")
        done = await peer.expect("response.done")
        assert done["response"]["status"] == "cancelled"
        await peer.send(
            "conversation.item.truncate", item_id=delta["item_id"], content_index=0, audio_end_ms=20
        )
        assert (await peer.expect("conversation.item.truncated"))["audio_end_ms"] == 20

        await peer.send("response.create")
        await peer.expect("response.audio.delta")
        await peer.speak("7")
        await peer.expect("input_audio_buffer.speech_started")
        assert (await peer.expect("response.done"))["response"]["status"] == "cancelled"
        assert (await peer.expect("response.audio_transcript.done"))["transcript"] == "you said 7"
        assert sim.connections[0].received_types().count("response.create") == 2


async def test_drop_connections_ends_every_session_like_an_expiry(sim: RealtimeSimulator) -> None:
    async with connect(sim.url) as first, connect(sim.url) as second:
        await sim.wait_for(lambda s: len(s.connections) == 2)
        await sim.drop_connections()
        for ws in (first, second):
            with pytest.raises(ConnectionClosedOK) as closed:
                while True:
                    await ws.recv()
            assert closed.value.rcvd is not None
            assert (closed.value.rcvd.code, closed.value.rcvd.reason) == (1000, "session expired")
    assert [c.closed for c in sim.connections] == [True, True]
    assert [c.session_id for c in sim.connections] == ["sess_1", "sess_2"]


async def test_only_the_realtime_path_is_served(sim: RealtimeSimulator) -> None:
    with pytest.raises(InvalidStatus) as refused:
        async with connect(sim.url.replace("/v1/realtime", "/elsewhere")):
            pass
    assert refused.value.response.status_code == 404


async def test_the_command_line_simulator_prints_its_url_and_serves() -> None:
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "bridges.simulator", "--port", "0", stdout=asyncio.subprocess.PIPE
    )
    try:
        assert process.stdout is not None
        async with asyncio.timeout(10):
            url = (await process.stdout.readline()).decode().strip()
        assert url.startswith("ws://127.0.0.1:") and url.endswith("/v1/realtime")
        async with connect(url) as ws:
            assert json.loads(await ws.recv())["type"] == "session.created"
    finally:
        process.terminate()
        await process.wait()
