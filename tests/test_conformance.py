"""Both bridges speak the Realtime GA protocol, checked against the `openai` package's models.

Calls through each telephony bridge, in every media format it negotiates and both VAD modes,
run against the strict simulator: it checks every client event against the SDK's models and
refuses keys they do not define, and it checks every event it sends the same way. Each call
ends with no refused event, and with the client events the bridge can send all exercised.
"""

from __future__ import annotations

import ast
import json
import re
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from bridges.audio import MEDIA_FORMATS, MediaFormat, model_format_for
from bridges.call.runtime import BridgeRuntime
from bridges.call.turns import _HANDLERS, IGNORED
from bridges.hosting import hosted_bridge
from bridges.sim.server import RealtimeSimulator
from bridges.sim.strict import CLIENT_EVENTS, SERVER_EVENTS
from bridges.sim.telephony import AudioCodesClient, TwilioClient
from sessions.settings import Settings
from sessions.state import SessionState, SessionStatus
from sessions.usage import ModelUsage

ROOT = Path(__file__).resolve().parent.parent
CALL = "CA0123456789abcdef0123456789abcdef"
SPOKEN = {
    "session.update",
    "input_audio_buffer.append",
    "response.create",
    "conversation.item.create",
}
WIRE = {"audio/pcm": {"type": "audio/pcm", "rate": 24_000}, "audio/pcmu": {"type": "audio/pcmu"}}


@pytest.fixture
async def sim() -> AsyncIterator[RealtimeSimulator]:
    async with RealtimeSimulator() as simulator:
        yield simulator


def runtime_for(sim: RealtimeSimulator, tmp_path: Path, **settings: Any) -> BridgeRuntime:
    return BridgeRuntime.build(
        Settings(archive_dir=str(tmp_path), **settings), realtime_url=sim.url, schedule=False
    )


def sent_types(sim: RealtimeSimulator) -> set[str]:
    return {t for record in sim.connections for t in record.received_types()}


def assert_all_ga(sim: RealtimeSimulator) -> None:
    """No client event refused; every event sent was checked (the simulator is strict)."""
    assert sim.violations() == []
    assert sim.ctx.strict_output
    served = {e["type"] for record in sim.connections for e in record.sent}
    assert served <= set(SERVER_EVENTS)


async def audiocodes_call(url: str, fmt: MediaFormat) -> None:
    """Greeting, a turn with a function call, DTMF, a drop and a resume, a turn, hang-up."""
    caller = AudioCodesClient(url, "conf-call")
    await caller.connect()
    assert (await caller.initiate([fmt]))["mediaFormat"] == fmt
    await caller.expect("playStream.stop")
    await caller.say("9123", fmt)
    await caller.expect(lambda m: m.get("type") == "playStream.stop" and m["streamId"] == "2")
    await caller.dtmf("5")
    await caller.close()
    again = AudioCodesClient(url, "conf-call")
    await again.connect()
    assert (await again.resume())["type"] == "session.accepted"
    await again.say("45", fmt)
    await again.expect("playStream.stop")
    await again.hangup()
    await again.closed()


async def twilio_call(url: str) -> None:
    stream = TwilioClient(url, CALL, "MZ1")
    await stream.connect()
    await stream.start({"caller": "+15550100"})
    await stream.expect("mark")
    await stream.say("9123")
    await stream.expect(lambda m: m.get("event") == "mark" and m["mark"]["name"] == "bot-2")
    await stream.dtmf("5")
    await stream.close()
    again = TwilioClient(url, CALL, "MZ2")
    await again.connect()
    await again.start({"caller": "+15550100"})
    await again.say("45")
    await again.expect("mark")
    await again.stop()
    await again.closed()


@pytest.mark.parametrize("vad", ["server", "local"])
@pytest.mark.parametrize("fmt", MEDIA_FORMATS)
async def test_an_audiocodes_call_in_every_format_is_pure_ga(
    sim: RealtimeSimulator, tmp_path: Path, fmt: MediaFormat, vad: str
) -> None:
    runtime = runtime_for(sim, tmp_path, vad_mode=vad)
    async with hosted_bridge(runtime) as url:
        await audiocodes_call(url, fmt)
    assert_all_ga(sim)
    expected = SPOKEN | ({"input_audio_buffer.commit"} if vad == "local" else set())
    assert sent_types(sim) == expected
    audio = sim.connections[0].config["audio"]
    wire = WIRE[model_format_for(fmt)]
    assert audio["input"]["format"] == wire and audio["output"]["format"] == wire
    replayed = [i["type"] for i in sim.connections[1].items]
    assert "function_call" in replayed and "function_call_output" in replayed


@pytest.mark.parametrize("vad", ["server", "local"])
async def test_a_twilio_call_is_pure_ga_and_mulaw_passes_through(
    sim: RealtimeSimulator, tmp_path: Path, vad: str
) -> None:
    runtime = runtime_for(sim, tmp_path, vad_mode=vad)
    async with hosted_bridge(runtime) as url:
        await twilio_call(url)
    assert_all_ga(sim)
    assert sent_types(sim) >= SPOKEN
    assert sim.connections[0].config["audio"]["input"]["format"] == {"type": "audio/pcmu"}


@pytest.mark.parametrize("vad", ["server", "local"])
async def test_barge_in_truncates_and_cancels_in_ga_shapes(tmp_path: Path, vad: str) -> None:
    async with RealtimeSimulator(pace=True, delta_ms=20) as sim:
        runtime = runtime_for(sim, tmp_path, vad_mode=vad)
        async with hosted_bridge(runtime) as url:
            caller = AudioCodesClient(url, "barge")
            await caller.connect()
            await caller.initiate()
            await caller.expect("playStream.chunk")  # the greeting is playing, in real time
            await caller.say("4")
            await sim.wait_for(lambda s: "conversation.item.truncate" in sent_types(s))
            await caller.expect(
                lambda m: m.get("type") == "playStream.start" and m["streamId"] == "2"
            )
            await caller.end()
        assert_all_ga(sim)
        assert "conversation.item.truncate" in sent_types(sim)
        if vad == "local":
            assert "response.cancel" in sent_types(sim)  # server VAD cancels by itself


def test_every_client_event_the_bridge_sends_is_a_ga_client_event() -> None:
    bridge_sends = SPOKEN | {
        "input_audio_buffer.commit",
        "conversation.item.truncate",
        "response.cancel",
    }
    assert bridge_sends <= set(CLIENT_EVENTS)
    model_side = [
        ROOT / "bridges" / "call" / "base.py",
        ROOT / "bridges" / "call" / "turns.py",
        *(ROOT / "bridges" / "model").glob("*.py"),
    ]
    sources = "".join(p.read_text() for p in model_side)
    sent = set(re.findall(r'"type": "([a-z_]+\.[a-z_.]+)"', sources))
    assert sent <= bridge_sends | set(SERVER_EVENTS), sent - bridge_sends


def test_every_event_the_bridge_handles_is_a_ga_server_event() -> None:
    handled = set(_HANDLERS) | IGNORED
    ours = {name for name in handled if name.startswith("client.")}
    assert handled - ours <= set(SERVER_EVENTS)
    assert {
        "response.output_audio.delta",
        "response.output_audio.done",
        "response.output_audio_transcript.done",
        "response.output_text.done",
        "conversation.item.input_audio_transcription.completed",
        "conversation.item.input_audio_transcription.failed",
        "conversation.item.done",
        "response.done",
        "rate_limits.updated",
        "error",
    } <= handled


BETA_MARKERS = re.compile(
    r"OpenAI-Beta|realtime=v1|response\.audio\.|response\.audio_transcript\.|response\.text\."
    r"|input_audio_format|output_audio_format|input_audio_transcription(?!\.)|g711_|\"pcm16\""
    r"|(?<!output_)\"modalities\"|gpt-4o-realtime-preview|\"alloy\""
)


def test_no_beta_shape_is_left_in_the_code_or_the_docs() -> None:
    files = [
        p
        for d in ("sessions", "bridges", "tasks", "workers", "cli", "bench")
        for p in (ROOT / d).rglob("*.py")
    ]
    files += [
        ROOT / name
        for name in ("celeryconfig.py", "README.md", ".env.example", "docker-compose.yml")
    ]
    found = []
    for path in files:
        for number, line in enumerate(path.read_text().splitlines(), 1):
            if BETA_MARKERS.search(line) and path.name != "server.py":
                found.append(f"{path.relative_to(ROOT)}:{number}: {line.strip()}")
    sim_server = (ROOT / "bridges" / "sim" / "server.py").read_text()
    beta_lines = [line for line in sim_server.splitlines() if BETA_MARKERS.search(line)]
    assert found == [] and all("BETA_HEADER" in line for line in beta_lines), found


def test_the_production_path_imports_neither_the_simulator_nor_the_sdk() -> None:
    probe = (
        "import sys, bridges.server, cli.main, workers.app; "
        "print([m for m in sys.modules if m.startswith(('bridges.sim', 'openai'))])"
    )
    done = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"
    for path in (ROOT / "bridges").rglob("*.py"):
        if "sim" in path.relative_to(ROOT).parts:
            continue
        imported = {
            n.module
            for n in ast.walk(ast.parse(path.read_text()))
            if isinstance(n, ast.ImportFrom) and n.module
        }
        assert not {m for m in imported if m.startswith(("bridges.sim", "openai"))}, path


# -- what the model is told about the call, and what it costs ---------------------------------


async def test_usage_is_kept_on_the_state_in_metrics_and_in_the_archive(
    sim: RealtimeSimulator, tmp_path: Path
) -> None:
    runtime = runtime_for(sim, tmp_path)
    async with hosted_bridge(runtime) as url:
        await audiocodes_call(url, "raw/lpcm16")
        await runtime.settle()
        http = url.replace("ws://", "http://")
        async with httpx.AsyncClient() as web:
            metrics = (await web.get(f"{http}/metrics")).text
            stats = (await web.get(f"{http}/stats")).json()
        state = await runtime.storage.load("conf-call")
    assert state is not None and state.status is SessionStatus.ENDED
    billed = billed_by(sim)
    assert state.usage == billed and billed.responses >= 4 and billed.cached_tokens > 0
    assert billed.transcription_input_tokens > 0
    assert f"opus_bridge_model_input_tokens_total {billed.input_tokens}" in metrics
    assert stats["counters"]["model_output_audio_tokens"] == billed.output_audio_tokens
    assert 'opus_model_rate_limit_remaining{name="tokens"}' in metrics
    record = json.loads(next(tmp_path.rglob("conf-call.json")).read_text())
    assert ModelUsage.model_validate(record["usage"]) == billed
    assert record["realtime"]["model"] == "gpt-realtime" and record["realtime"]["sessions"] == 2
    assert record["realtime"]["input_format"] == "audio/pcm" and "usage" not in record["state"]


def billed_by(sim: RealtimeSimulator) -> ModelUsage:
    """What the simulator billed over all its connections, in the session's terms."""
    from bridges.model.events import ResponseUsage, TranscriptionUsage

    total = ModelUsage()
    for record in sim.connections:
        for done in record.sent_of("response.done"):
            total = total.plus(ResponseUsage.model_validate(done["response"]["usage"]).as_usage())
        for heard in record.sent_of("conversation.item.input_audio_transcription.completed"):
            total = total.plus(TranscriptionUsage.model_validate(heard["usage"]).as_usage())
    return total


async def test_the_model_info_names_provider_model_voice_and_formats(
    sim: RealtimeSimulator, tmp_path: Path
) -> None:
    runtime = runtime_for(sim, tmp_path, openai_voice="cedar")
    async with hosted_bridge(runtime) as url:
        caller = AudioCodesClient(url, "info")
        await caller.connect()
        await caller.initiate(["raw/mulaw"])
        await caller.expect("playStream.stop")
        state: SessionState | None = runtime.calls["info"].state
        assert state is not None and state.realtime is not None
        info = state.realtime
        assert (info.provider, info.model, info.voice) == ("openai", "gpt-realtime", "cedar")
        assert (info.input_format, info.output_format, info.sessions) == (
            "audio/pcmu",
            "audio/pcmu",
            1,
        )
        assert state.openai_session_id == "sess_1"
        await caller.end()
