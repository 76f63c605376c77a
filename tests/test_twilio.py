"""Twilio Media Streams calls over real WebSockets against the real server and the simulator."""

from __future__ import annotations

import asyncio
import copy
import json
from pathlib import Path
from typing import Any

import pytest
from twilio.request_validator import RequestValidator
from websockets.exceptions import InvalidStatus

from bridges.call.runtime import BridgeRuntime
from bridges.hosting import hosted_bridge
from bridges.sim.server import RealtimeSimulator
from bridges.sim.telephony import TwilioClient, twilio_status_callback
from bridges.telephony.twilio import TwilioBridge
from sessions.settings import Settings
from sessions.state import SessionState, SessionStatus
from tests.conftest import wait_for, wait_until

CALL = "CA0123456789abcdef0123456789abcdef"
ACCOUNT = "AC" + "0" * 32


async def full_call(client: TwilioClient) -> None:
    """Greeting, two turns (the second calls a function), a DTMF digit, then `stop`."""
    await client.start({"caller": "+15550100", "botName": "twilio-bot"})
    await client.expect("mark")  # the greeting has been sent
    greeting = client.audio_frames()
    assert greeting and all(len(frame) == 160 for frame in greeting)
    assert await client.echo_marks() == ["bot-1"]
    await client.say("123")
    await client.expect("mark")
    await client.say("9123")  # the simulator calls lookup_account for "9..."
    await client.expect("mark")
    await client.echo_marks()
    await client.dtmf("5")
    await client.stop()
    assert await client.closed() == 1000


def check_record(record: dict[str, Any]) -> None:
    """The archived call holds the turns, the DTMF digit, the function call and the parameters."""
    turns = [(t["role"], t["content"]) for t in record["transcript"]]
    assert ("user", "123") in turns and ("assistant", "you said 123") in turns
    assert ("user", "DTMF 5") in turns and ("assistant", "ok done") in turns
    call = record["function_calls"][0]
    assert call["name"] == "lookup_account" and call["result"]["account_id"] == "123"
    assert record["state"]["metadata"]["custom_parameters"]["caller"] == "+15550100"
    assert record["caller"] == "+15550100" and record["bot_name"] == "twilio-bot"
    assert record["bridge_type"] == "twilio" and record["status"] == "ended"


async def stored(runtime: BridgeRuntime, call_sid: str = CALL) -> SessionState:
    state = await runtime.storage.load(call_sid)
    assert state is not None
    return state


async def test_a_full_call_on_the_embedded_default_is_ended_and_archived(
    sim: RealtimeSimulator, tmp_path: Path
) -> None:
    runtime = BridgeRuntime.build(
        Settings(archive_dir=str(tmp_path)), realtime_url=sim.url, schedule=False
    )
    async with hosted_bridge(runtime) as url:
        client = TwilioClient(url, CALL, "MZ1")
        await client.connect()
        await full_call(client)
        await runtime.settle()
        assert (await stored(runtime)).status is SessionStatus.PAUSED  # the call may go on
        assert await twilio_status_callback(url, CALL, "completed") == 204
        await runtime.settle()
        state = await stored(runtime)
        assert state.status is SessionStatus.ENDED and state.end_reason == "call completed"
        assert sim.connections[0].config["audio"]["input"]["format"] == {"type": "audio/pcmu"}
        assert runtime.metrics.counters["protocol_errors"] == 0
        again = TwilioClient(url, CALL, "MZ2")  # a stream for the ended call is refused
        await again.connect()
        await again.start()
        assert await again.closed() == 1008 and again.close_reason == "call has ended"
    archive = next(tmp_path.rglob(f"{CALL}.json"))
    check_record(json.loads(archive.read_text()))


async def test_a_full_call_on_redis_is_archived_by_the_celery_worker(
    redis_settings: Settings, sim: RealtimeSimulator
) -> None:
    runtime = BridgeRuntime.build(redis_settings, realtime_url=sim.url)
    archive_dir = Path(redis_settings.archive_dir)
    async with hosted_bridge(runtime) as url:
        client = TwilioClient(url, CALL, "MZ1")
        await client.connect()
        await full_call(client)
        assert await twilio_status_callback(url, CALL, "completed") == 204
        await asyncio.to_thread(wait_for, lambda: any(archive_dir.rglob(f"{CALL}.json")))
        state = await stored(runtime)
    assert state.status is SessionStatus.ENDED
    check_record(json.loads(next(archive_dir.rglob(f"{CALL}.json")).read_text()))


@pytest.mark.parametrize("backend", ["embedded", "redis"])
async def test_a_dropped_stream_resumes_on_a_second_instance_with_history_and_no_greeting(
    backend: str, request: pytest.FixtureRequest, sim: RealtimeSimulator, tmp_path: Path
) -> None:
    if backend == "redis":
        settings: Settings = request.getfixturevalue("redis_settings")
        first = BridgeRuntime.build(settings, realtime_url=sim.url)
        second = BridgeRuntime.build(settings, realtime_url=sim.url)
    else:
        settings = Settings(archive_dir=str(tmp_path))
        first = second = BridgeRuntime.build(settings, realtime_url=sim.url, schedule=False)
    owns = backend == "redis"
    async with hosted_bridge(first, owns_runtime=owns) as url_a, \
            hosted_bridge(second, owns_runtime=owns) as url_b:  # fmt: skip
        dropped = TwilioClient(url_a, CALL, "MZ1")
        await dropped.connect()
        await dropped.start()
        await dropped.expect("mark")
        await dropped.say("123")
        await dropped.expect("mark")
        await dropped.dtmf("5")
        await dropped.close()
        await wait_until(lambda: _has_status(first, SessionStatus.PAUSED))
        connections = len(sim.connections)
        again = TwilioClient(url_b, CALL, "MZ2")
        await again.connect()
        await again.start({"caller": "+15550100"})
        await sim.wait_for(lambda s: len(s.connections) > connections)
        replayed = sim.connections[-1]
        await sim.wait_for(lambda s: any("DTMF 5" in json.dumps(i) for i in replayed.items))
        await again.say("45")
        await again.expect("mark")
        await again.stop()
        assert await again.closed() == 1000
        assert await twilio_status_callback(url_b, CALL, "completed") == 204
        await second.settle()
        await wait_until(lambda: _has_status(second, SessionStatus.ENDED))  # a worker applies it
        state = await stored(second)
    if not owns:
        await first.close()
    texts = [json.dumps(item) for item in replayed.items]
    assert any('"123"' in t for t in texts) and any("you said 123" in t for t in texts)
    types = replayed.received_types()
    assert "response.create" not in types[: types.index("input_audio_buffer.append")]
    assert state.resumed_count == 1 and state.epoch == 2
    assert [t["content"] for t in state.conversation_history][-2:] == ["45", "you said 45"]
    assert state.metadata["twilio"]["stream_sid"] == "MZ2"


async def test_a_stopped_stream_resumes_on_a_new_stream_within_its_grace(
    sim: RealtimeSimulator, tmp_path: Path
) -> None:
    settings = Settings(archive_dir=str(tmp_path), twilio_stop_grace_s=30)
    runtime = BridgeRuntime.build(settings, realtime_url=sim.url, schedule=False)
    async with hosted_bridge(runtime) as url:
        first = TwilioClient(url, CALL, "MZ1")
        await first.connect()
        await first.start()
        await first.expect("mark")
        await first.say("123")
        await first.expect(lambda m: m.get("event") == "mark" and m["mark"]["name"] == "bot-2")
        await first.stop()  # <Connect action> moves the call to a new stream
        assert await first.closed() == 1000 and "can resume" in str(first.close_reason)
        assert runtime.handover.waiting == 1
        second = TwilioClient(url, CALL, "MZ2")
        await second.connect()
        await second.start()
        await sim.wait_for(lambda s: len(s.connections) == 2 and len(s.connections[1].items) > 2)
        assert runtime.handover.waiting == 0
        await second.say("45")
        await second.expect("mark")
        replayed = json.dumps(sim.connections[1].items)
        assert '"123"' in replayed and "you said 123" in replayed
        assert await twilio_status_callback(url, CALL, "no-answer") == 204
        assert await second.closed() == 1000  # the status callback hangs the live call up
        await runtime.settle()
        state = await stored(runtime)
    assert state.status is SessionStatus.ENDED and state.end_reason == "call no-answer"
    assert state.resumed_count == 1
    assert [t["content"] for t in state.conversation_history][-2:] == ["45", "you said 45"]


async def test_a_stopped_stream_not_resumed_ends_when_its_grace_is_over(
    sim: RealtimeSimulator, tmp_path: Path
) -> None:
    settings = Settings(archive_dir=str(tmp_path), twilio_stop_grace_s=0.3)
    runtime = BridgeRuntime.build(settings, realtime_url=sim.url, schedule=False)
    async with hosted_bridge(runtime) as url:
        stream = TwilioClient(url, CALL, "MZ1")
        await stream.connect()
        await stream.start()
        await stream.expect("mark")
        await stream.stop()
        await stream.closed()
        await wait_until(lambda: _has_status(runtime, SessionStatus.ENDED))
        await runtime.settle()
        state = await stored(runtime)
        assert state.end_reason == "call ended" and runtime.handover.waiting == 0
    assert any(tmp_path.rglob(f"{CALL}.json"))


async def test_the_status_callback_is_signed_and_only_final_statuses_end(
    sim: RealtimeSimulator, tmp_path: Path
) -> None:
    settings = Settings(archive_dir=str(tmp_path), twilio_auth_token="s3cret")
    runtime = BridgeRuntime.build(settings, realtime_url=sim.url, schedule=False)
    async with hosted_bridge(runtime) as url:
        signature = RequestValidator("s3cret").compute_signature(f"{url}/ws/twilio", {})
        stream = TwilioClient(url, CALL, "MZ1", headers={"X-Twilio-Signature": signature})
        await stream.connect()
        await stream.start()
        await stream.expect("mark")
        assert await twilio_status_callback(url, CALL, "completed") == 403  # unsigned
        assert await twilio_status_callback(url, CALL, "completed", "wrong") == 403
        assert await twilio_status_callback(url, CALL, "in-progress", "s3cret") == 204
        assert CALL in runtime.calls
        assert await twilio_status_callback(url, CALL, "completed", "s3cret") == 204
        assert await stream.closed() == 1000
        assert runtime.metrics.counters["refused_status_callbacks"] == 2


async def _has_status(runtime: BridgeRuntime, status: SessionStatus) -> bool:
    state = await runtime.storage.load(CALL)
    return state is not None and state.status is status


async def test_a_second_stream_for_a_live_call_takes_it_over(
    embedded: tuple[str, BridgeRuntime], sim: RealtimeSimulator
) -> None:
    url, runtime = embedded
    old = TwilioClient(url, CALL, "MZold")
    await old.connect()
    await old.start()
    await old.expect("mark")
    await old.echo_marks()  # the greeting was heard
    await old.say("123")
    await old.expect("mark")
    bridge = runtime.calls[CALL]
    assert isinstance(bridge, TwilioBridge)
    assert bridge.heard_mark == "bot-1" and bridge.outstanding_marks == 1
    new = TwilioClient(url, CALL, "MZnew")
    await new.connect()
    await new.start()
    assert await old.closed() == 1000 and old.close_reason is not None
    assert "replaced" in old.close_reason
    await new.say("45")
    await new.expect("mark")
    taken_over = runtime.calls[CALL]
    assert isinstance(taken_over, TwilioBridge) and taken_over.stream_sid == "MZnew"
    assert not new.of_type("clear")
    await new.stop()
    assert await new.closed() == 1000
    assert await twilio_status_callback(url, CALL, "completed") == 204
    await runtime.settle()
    state = await stored(runtime)
    assert state.status is SessionStatus.ENDED and state.resumed_count == 1
    contents = [t["content"] for t in state.conversation_history]
    assert contents == ["hello", "123", "you said 123", "45", "you said 45"]


async def test_speaking_over_the_bot_clears_twilio_and_truncates_the_model_item(
    tmp_path: Path,
) -> None:
    async with RealtimeSimulator(pace=True) as sim:
        settings = Settings(archive_dir=str(tmp_path))
        runtime = BridgeRuntime.build(settings, realtime_url=sim.url, schedule=False)
        async with hosted_bridge(runtime) as url:
            client = TwilioClient(url, CALL, "MZ1")
            await client.connect()
            await client.start()
            await client.expect("media")  # the greeting is playing (paced in real time)
            await client.say("4")
            clear = await client.expect("clear")
            assert clear == {"event": "clear", "streamSid": "MZ1"}
            model = sim.connections[0]
            await sim.wait_for(lambda s: "conversation.item.truncate" in model.received_types())
            mark = await client.expect("mark")  # the answer to "4" plays to its end
            assert mark["mark"]["name"] == "bot-1"
            assert runtime.metrics.counters["barge_ins"] == 1
    truncate = next(e for e in model.received if e["type"] == "conversation.item.truncate")
    assert 0 < truncate["audio_end_ms"] < 600


@pytest.mark.parametrize("scheme", ["wss", "ws"])
async def test_a_signed_upgrade_connects_and_a_wrong_signature_is_refused(
    sim: RealtimeSimulator, tmp_path: Path, scheme: str
) -> None:
    settings = Settings(archive_dir=str(tmp_path), twilio_auth_token="s3cret")
    runtime = BridgeRuntime.build(settings, realtime_url=sim.url, schedule=False)
    async with hosted_bridge(runtime) as url:
        signed_url = f"{url}/ws/twilio".replace("ws://", f"{scheme}://")
        signature = RequestValidator("s3cret").compute_signature(signed_url, {})
        for wrong in ({"X-Twilio-Signature": "bm90IGl0"}, {}):
            with pytest.raises(InvalidStatus) as refused:
                await TwilioClient(url, CALL, "MZ1", headers=wrong).connect()
            assert refused.value.response.status_code == 403
        client = TwilioClient(url, CALL, "MZ1", headers={"X-Twilio-Signature": signature})
        await client.connect()
        await client.start()
        await client.expect("mark")


# -- bad input: table-driven ------------------------------------------------------------------

BAD_CALL, BAD_STREAM = "CAbad", "MZbad"
START: dict[str, Any] = {
    "event": "start", "sequenceNumber": "1", "streamSid": BAD_STREAM,
    "start": {"streamSid": BAD_STREAM, "accountSid": ACCOUNT, "callSid": BAD_CALL,
              "tracks": ["inbound"], "customParameters": {},
              "mediaFormat": {"encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": 1}},
}  # fmt: skip
IGNORED = 0


def start_with(**changes: Any) -> str:
    """A `start` event with fields of `start` replaced (None: removed)."""
    message = copy.deepcopy(START)
    for name, value in changes.items():
        if value is None:
            del message["start"][name]
        else:
            message["start"][name] = value
    return json.dumps(message)


def event(kind: str, stream_sid: str = BAD_STREAM, **fields: Any) -> str:
    return json.dumps({"event": kind, "streamSid": stream_sid, **fields})


MULAW = {"encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": 1}
BAD_INPUT = [
    ("malformed JSON before start", False, '{"event": "start",', 1008, "malformed JSON"),
    ("unknown event before start", False, event("ring"), 1008, "unknown event"),
    ("callSid with a path", False, start_with(callSid="../../x"), 1008, "conversation id"),
    ("callSid with a space", False, start_with(callSid="a b"), 1008, "conversation id"),
    ("missing callSid", False, start_with(callSid=None), 1008, "callSid"),
    ("wrong media format", False, start_with(mediaFormat={**MULAW, "encoding": "audio/l16"}),
     1008, "unsupported Twilio media format"),
    ("stereo", False, start_with(mediaFormat={**MULAW, "channels": 2}), 1008, "2 channels"),
    ("wrong-typed start field", False, start_with(mediaFormat={**MULAW, "sampleRate": "8000"}),
     1008, "sampleRate"),
    ("media before start", False, event("media", media={"payload": "//8="}), 1008,
     "media before start"),
    ("malformed JSON", True, '{"event": "media",', IGNORED, ""),
    ("unknown event", True, event("ring"), IGNORED, ""),
    ("invalid base64 payload", True, event("media", media={"payload": "not base64!!"}),
     IGNORED, ""),
    ("wrong-typed media field", True, event("media", media={"payload": 5}), IGNORED, ""),
    ("dtmf digit out of range", True, event("dtmf", dtmf={"digit": "X"}), IGNORED, ""),
    ("streamSid of another stream", True, event("media", "MZother", media={"payload": "//8="}),
     IGNORED, ""),
    ("mark never sent", True, event("mark", mark={"name": "nope"}), IGNORED, ""),
    ("second start", True, json.dumps(START), IGNORED, ""),
    ("oversize frame", True, event("media", media={"payload": "A" * 5000}), IGNORED, ""),
    ("frame past twice the limit", True, event("media", media={"payload": "A" * 9000}), 1009,
     ""),
]  # fmt: skip


@pytest.mark.parametrize(("case", "started", "raw", "code", "reason"), BAD_INPUT,
                         ids=[c[0] for c in BAD_INPUT])  # fmt: skip
async def test_bad_input_is_refused_or_ignored_and_another_call_goes_on(
    embedded: tuple[str, BridgeRuntime], sim: RealtimeSimulator,
    case: str, started: bool, raw: str, code: int, reason: str,
) -> None:  # fmt: skip
    url, runtime = embedded
    good = TwilioClient(url, "CAgood", "MZgood")
    await good.connect()
    await good.start()
    await good.expect("mark")
    bad = TwilioClient(url, BAD_CALL, BAD_STREAM)
    await bad.connect()
    if started:
        await bad.start()
        await bad.expect("mark")
    else:
        await bad.send_json({"event": "connected", "protocol": "Call", "version": "1.0.0"})
    await bad.send_raw(raw)
    if code == IGNORED:
        await bad.dtmf("7")  # handled in order: once it reaches the model, the bad input was
        await sim.wait_for(lambda s: any("DTMF 7" in json.dumps(i)
                                         for c in s.connections for i in c.items))  # fmt: skip
        assert bad.close_code is None and BAD_CALL in runtime.calls
    else:
        assert await bad.closed() == code
        assert reason in (bad.close_reason or "")
    expected_errors = 0 if code == 1009 else 1
    assert runtime.metrics.counters["protocol_errors"] == expected_errors
    await good.echo_marks()
    await good.say("123")
    await good.expect("mark")
    await good.stop()
    assert await good.closed() == 1000
    assert "CAgood" not in runtime.calls
