"""When the model refuses or fails, calls end cleanly, named and archived, never left hanging."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from bridges.call.runtime import BridgeRuntime
from bridges.hosting import hosted_bridge
from bridges.sim.server import RealtimeSimulator
from bridges.sim.telephony import AudioCodesClient, TwilioClient
from sessions.settings import Settings
from sessions.state import SessionStatus
from tests.conftest import wait_until

CALL = "CA0123456789abcdef0123456789abcdef"
WRONG_KEY = "sk-wrong-key-0123456789"
QUOTA = {
    "type": "insufficient_quota",
    "code": "insufficient_quota",
    "message": "You exceeded your current quota.",
}


@pytest.fixture
async def locked_sim() -> AsyncIterator[RealtimeSimulator]:
    """A model that takes only its own key."""
    async with RealtimeSimulator(api_key="sk-right") as simulator:
        yield simulator


async def no_realtime_tasks() -> bool:
    return not [t for t in asyncio.all_tasks() if t.get_name().startswith("realtime-")]


async def greeted(url: str, conversation_id: str) -> AudioCodesClient:
    """An AudioCodes call that is up and has heard its greeting."""
    caller = AudioCodesClient(url, conversation_id)
    await caller.connect()
    await caller.initiate()
    await caller.expect("playStream.stop")
    return caller


def runtime(sim: RealtimeSimulator, tmp_path: Path, key: str = "sk-right") -> BridgeRuntime:
    settings = Settings(archive_dir=str(tmp_path), openai_api_key=key)
    return BridgeRuntime.build(settings, realtime_url=sim.url, schedule=False)


async def test_a_refused_key_refuses_the_audiocodes_call_naming_the_setting(
    locked_sim: RealtimeSimulator, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    bridge = runtime(locked_sim, tmp_path, WRONG_KEY)
    async with hosted_bridge(bridge) as url:
        caller = AudioCodesClient(url, "refused")
        await caller.connect()
        answer = await caller.initiate()
        assert answer["type"] == "session.error" and "OPENAI_API_KEY" in answer["reason"]
        assert await caller.closed() == 1000
        await bridge.settle()
        state = await bridge.storage.load("refused")
    assert state is not None and state.status is SessionStatus.ENDED
    assert state.end_reason == "model refused" and "OPENAI_API_KEY" in (state.last_error or "")
    assert bridge.calls == {} and bridge.metrics.counters["calls_failed"] == 1
    assert any(tmp_path.rglob("refused.json"))
    assert WRONG_KEY not in caplog.text and WRONG_KEY not in json.dumps(answer)


async def test_a_refused_key_closes_the_twilio_stream_naming_the_setting(
    locked_sim: RealtimeSimulator, tmp_path: Path
) -> None:
    async with hosted_bridge(runtime(locked_sim, tmp_path, WRONG_KEY)) as url:
        stream = TwilioClient(url, CALL, "MZ1")
        await stream.connect()
        await stream.start()
        assert await stream.closed() == 1011
        assert stream.close_reason == "model refused the session: check OPENAI_API_KEY"


async def test_a_quota_refusal_mid_call_hangs_up_the_audiocodes_caller(
    locked_sim: RealtimeSimulator, tmp_path: Path
) -> None:
    bridge = runtime(locked_sim, tmp_path)
    async with hosted_bridge(bridge) as url:
        caller = await greeted(url, "quota")
        await locked_sim.send(0, "error", error=QUOTA)
        hangup = await caller.expect("activities")
        assert hangup["activities"][0]["name"] == "hangup"
        assert await caller.closed() == 1000
        await wait_until(lambda: no_realtime_tasks())  # the client closed from its own task
        await bridge.settle()
        state = await bridge.storage.load("quota")
    assert state is not None and state.status is SessionStatus.ENDED
    assert state.end_reason == "model refused" and "insufficient_quota" in (state.last_error or "")
    assert len(locked_sim.connections) == 1  # a refusal is not retried


async def test_a_quota_refusal_mid_call_closes_the_twilio_stream(
    locked_sim: RealtimeSimulator, tmp_path: Path
) -> None:
    async with hosted_bridge(runtime(locked_sim, tmp_path)) as url:
        stream = TwilioClient(url, CALL, "MZ1")
        await stream.connect()
        await stream.start()
        await stream.expect("mark")
        await locked_sim.send(0, "error", error=QUOTA)
        assert await stream.closed() == 1011


async def test_a_resume_the_model_refuses_leaves_the_call_resumable(
    locked_sim: RealtimeSimulator, tmp_path: Path
) -> None:
    bridge = runtime(locked_sim, tmp_path)
    async with hosted_bridge(bridge) as url:
        caller = await greeted(url, "resume-refused")
        await caller.close()
        await bridge.settle()
        locked_sim.api_key = "sk-rotated"  # the key was rotated: this instance's is refused
        again = AudioCodesClient(url, "resume-refused")
        await again.connect()
        answer = await again.resume()
        assert answer["type"] == "session.error" and "OPENAI_API_KEY" in answer["reason"]
        assert await again.closed() == 1000
        await bridge.settle()
        state = await bridge.storage.load("resume-refused")
        assert state is not None and state.status is SessionStatus.PAUSED
        locked_sim.api_key = "sk-right"
        third = AudioCodesClient(url, "resume-refused")
        await third.connect()
        assert (await third.resume())["type"] == "session.accepted"
        await third.end()


async def test_unknown_server_events_are_ignored_and_the_call_goes_on(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level("DEBUG", logger="bridges.call.turns")
    async with RealtimeSimulator() as sim, hosted_bridge(runtime(sim, tmp_path)) as url:
        caller = await greeted(url, "future")
        await sim.send_unchecked(0, {"type": "response.future_feature", "event_id": "e1", "x": 1})
        await sim.send_unchecked(0, {"type": "conversation.item.added", "item": "not an item"})
        await caller.say("12")
        answer = await caller.expect(
            lambda m: m.get("type") == "playStream.start" and m["streamId"] == "2"
        )
        assert answer["mediaFormat"] == "raw/lpcm16"
        await caller.end()
    assert "response.future_feature" in caplog.text and sim.violations() == []


async def test_a_call_outlives_a_model_session_the_server_closes_by_surprise(
    tmp_path: Path,
) -> None:
    async with RealtimeSimulator(max_session_s=0.5, announced_session_s=3600) as sim:
        bridge = runtime(sim, tmp_path)
        async with hosted_bridge(bridge) as url:
            caller = await greeted(url, "capped")
            await caller.say("12")
            await caller.expect(
                lambda m: m.get("type") == "playStream.stop" and m["streamId"] == "2"
            )
            await sim.wait_for(
                lambda s: len(s.connections) >= 2 and len(s.connections[1].items) > 2
            )
            await caller.say("34")
            await caller.expect(
                lambda m: m.get("type") == "playStream.stop" and m["streamId"] == "3"
            )
            state = bridge.calls["capped"].state
            assert state is not None and state.realtime is not None
            assert state.realtime.sessions >= 2
            await caller.end()
        replayed = json.dumps(sim.connections[1].items)
        assert '"12"' in replayed and "you said 12" in replayed
        assert bridge.metrics.counters["model_reconnects"] >= 1 and sim.violations() == []
