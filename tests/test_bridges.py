"""AudioCodes calls over real WebSockets against the real server, the simulator and Redis."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import httpx
import pytest
import redis
from websockets.exceptions import InvalidStatus

from bridges.call.runtime import BridgeRuntime
from bridges.hosting import hosted_bridge
from bridges.sim.server import RealtimeSimulator
from bridges.sim.telephony import AudioCodesClient
from sessions.codec import Snapshot
from sessions.errors import StorageUnavailable
from sessions.settings import Settings
from sessions.state import SessionStatus
from sessions.storage import SaveAck, SessionStorage
from tests.conftest import wait_until
from tests.services import throwaway_redis
from tests.workers import broker_app, subprocess_worker


async def stored_status(runtime: BridgeRuntime, cid: str) -> SessionStatus | None:
    state = await runtime.storage.load(cid)
    return None if state is None else state.status


async def full_call(client: AudioCodesClient) -> None:
    """Greeting, two turns (the second calls a function), a DTMF digit."""
    accepted = await client.initiate()
    assert accepted["type"] == "session.accepted" and accepted["mediaFormat"] == "raw/lpcm16"
    await client.expect("playStream.stop")  # the greeting
    await client.say("123")
    await client.expect("playStream.stop")
    await client.say("9123")  # the simulator calls lookup_account for "9..."
    await client.expect("playStream.stop")
    await client.dtmf("5")


async def test_a_full_audiocodes_call_is_saved_ended_and_archived(
    redis_settings: Settings, sim: RealtimeSimulator
) -> None:
    runtime = BridgeRuntime.build(redis_settings, realtime_url=sim.url)
    async with hosted_bridge(runtime) as url:
        client = AudioCodesClient(url, "call-full")
        await client.connect()
        await full_call(client)
        await client.hangup()
        assert await client.closed() == 1000
        await wait_until(lambda: _archived(redis_settings, "call-full"))
        state = await runtime.storage.load("call-full")
    assert state is not None and state.status is SessionStatus.ENDED
    assert state.end_reason == "caller hung up"
    record = json.loads(next(Path(redis_settings.archive_dir).rglob("call-full.json")).read_text())
    turns = [(t["role"], t["content"]) for t in record["transcript"]]
    assert ("user", "123") in turns and ("assistant", "you said 123") in turns
    assert ("user", "DTMF 5") in turns
    calls = record["function_calls"]
    assert calls[0]["name"] == "lookup_account" and calls[0]["result"]["account_id"] == "123"


async def _archived(settings: Settings, cid: str) -> bool:
    return any(Path(settings.archive_dir).rglob(f"{cid}.json"))


async def test_a_dropped_call_resumes_on_a_second_instance_with_history_and_no_greeting(
    redis_settings: Settings, sim: RealtimeSimulator
) -> None:
    first = BridgeRuntime.build(redis_settings, realtime_url=sim.url)
    second = BridgeRuntime.build(redis_settings, realtime_url=sim.url)
    async with hosted_bridge(first) as url_a, hosted_bridge(second) as url_b:
        caller = AudioCodesClient(url_a, "call-resume")
        await caller.connect()
        await full_call(caller)
        await caller.close()  # the WebSocket drops; VAIC reconnects elsewhere
        await wait_until(lambda: _has_status(first, "call-resume", SessionStatus.PAUSED))
        again = AudioCodesClient(url_b, "call-resume")
        await again.connect()
        assert (await again.resume())["type"] == "session.accepted"
        assert (await again.expect("session.resumed"))["sessionId"] == second.instance_id
        replayed = sim.connections[-1]
        await sim.wait_for(lambda s: len(replayed.items) >= 6)
        await again.say("45")
        await again.expect("playStream.stop")
        await again.end("done")
        await again.closed()
    texts = [json.dumps(item) for item in replayed.items]
    assert any('"123"' in t for t in texts) and any("function_call_output" in t for t in texts)
    assert any("DTMF 5" in t for t in texts)
    assert "response.create" not in replayed.received_types()[:8]  # no greeting replayed
    await wait_until(lambda: _has_status(second, "call-resume", SessionStatus.ENDED))
    state = await second.storage.load("call-resume")
    assert state is not None and state.resumed_count == 1 and state.epoch == 2
    assert [t["content"] for t in state.conversation_history][-2:] == ["45", "you said 45"]


async def _has_status(runtime: BridgeRuntime, cid: str, status: SessionStatus) -> bool:
    return await stored_status(runtime, cid) is status


class GatedStorage:
    """Holds the hand-off write until opened: an instance slow to hand a dropped call over."""

    def __init__(self, inner: SessionStorage) -> None:
        self.inner = inner
        self.opened = asyncio.Event()

    async def save_durable(self, snapshot: Snapshot, replicas: int, timeout_ms: int) -> SaveAck:
        await self.opened.wait()
        return await self.inner.save_durable(snapshot, replicas, timeout_ms)


async def test_a_resume_right_after_a_drop_waits_for_the_old_instance_to_hand_over(
    redis_settings: Settings, sim: RealtimeSimulator
) -> None:
    first = BridgeRuntime.build(redis_settings, realtime_url=sim.url)
    second = BridgeRuntime.build(redis_settings, realtime_url=sim.url)
    async with hosted_bridge(first) as url_a, hosted_bridge(second) as url_b:
        caller = AudioCodesClient(url_a, "call-handoff")
        await caller.connect()
        await caller.initiate()
        await caller.expect("playStream.stop")
        gate = GatedStorage(first.storage)
        first.handover.storage = gate  # type: ignore[assignment]  # the hand-off waits here
        await caller.say("123")
        await caller.expect("playStream.stop")
        await caller.close()
        again = AudioCodesClient(url_b, "call-handoff")
        await again.connect()
        resumed = asyncio.create_task(again.resume())
        await wait_until(lambda: _counted(second, "resume_handoff_waits"))
        gate.opened.set()
        assert (await resumed)["type"] == "session.accepted"
        state = second.calls["call-handoff"].state
        assert state is not None
        assert ("user", "123") in [(t["role"], t["content"]) for t in state.conversation_history]
        assert second.metrics.counters["resume_handoff_timeouts"] == 0
        await again.end("done")
        await again.closed()


async def _counted(runtime: BridgeRuntime, counter: str) -> bool:
    return runtime.metrics.counters[counter] > 0


async def test_a_late_save_from_the_old_instance_loses_to_the_resume(
    redis_settings: Settings, sim: RealtimeSimulator
) -> None:
    first = BridgeRuntime.build(redis_settings, realtime_url=sim.url)
    impatient = redis_settings.model_copy(update={"resume_handoff_ms": 200})
    second = BridgeRuntime.build(impatient, realtime_url=sim.url)
    async with hosted_bridge(first) as url_a, hosted_bridge(second) as url_b:
        caller = AudioCodesClient(url_a, "call-race")
        await caller.connect()
        await caller.initiate()
        await wait_until(lambda: _has_status(first, "call-race", SessionStatus.ACTIVE))
        old = first.calls["call-race"].state
        assert old is not None
        again = AudioCodesClient(url_b, "call-race")  # resumed while A still holds the call
        await again.connect()
        assert (await again.resume())["type"] == "session.accepted"
        assert second.metrics.counters["resume_handoff_timeouts"] == 1  # A never handed over
        old.caller = "written late by the old instance"
        first.persister.save(old)  # epoch 1: must lose to epoch 2
        assert await first.persister.aflush(5)
        await wait_until(lambda: _stale_seen(redis_settings))
        state = await second.storage.load("call-race")
    assert state is not None and state.epoch == 2 and state.caller == "+15550100"


async def _stale_seen(settings: Settings) -> bool:
    client = redis.Redis.from_url(settings.effective_redis_url)
    try:
        return int(client.hget(settings.session_prefix + "_events", "snapshots_stale") or 0) > 0
    finally:
        client.close()


async def test_audio_keeps_flowing_while_redis_is_paused_and_the_state_lands_after(
    sim: RealtimeSimulator, tmp_path: Path
) -> None:
    with throwaway_redis() as url:
        settings = Settings(redis_url=url, archive_dir=str(tmp_path), save_interval_ms=20)
        env = {"REDIS_URL": url, "ARCHIVE_DIR": str(tmp_path)}
        with subprocess_worker(broker_app(settings), env, tmp_path / "worker.log",
                               queues="persistence,archive"):  # fmt: skip
            runtime = BridgeRuntime.build(settings, realtime_url=sim.url)
            async with hosted_bridge(runtime) as bridge:
                caller = AudioCodesClient(bridge, "call-paused")
                await caller.connect()
                await caller.initiate()
                await caller.expect("playStream.stop")
                pauser = redis.Redis.from_url(url)
                pauser.execute_command("CLIENT", "PAUSE", "3000", "WRITE")
                await caller.say("77")  # the whole turn happens while Redis refuses writes
                await caller.expect(lambda m: m.get("type") == "playStream.chunk")
                await caller.expect("playStream.stop")
                pauser.execute_command("CLIENT", "UNPAUSE")
                pauser.close()
                await wait_until(lambda: _has_turn(runtime, "call-paused", "you said 77"))


async def _has_turn(runtime: BridgeRuntime, cid: str, text: str) -> bool:
    state = await runtime.storage.load(cid)
    return state is not None and any(t["content"] == text for t in state.conversation_history)


async def test_shutdown_saves_live_calls_paused_for_another_instance(
    redis_settings: Settings, sim: RealtimeSimulator
) -> None:
    runtime = BridgeRuntime.build(redis_settings, realtime_url=sim.url)
    async with hosted_bridge(runtime, owns_runtime=False) as url:
        caller = AudioCodesClient(url, "call-shutdown")
        await caller.connect()
        await caller.initiate()
    await runtime.close(5)
    reader = BridgeRuntime.build(redis_settings)
    assert await stored_status(reader, "call-shutdown") is SessionStatus.PAUSED
    await reader.storage.close()


# -- the embedded default: bad input, authentication, health -------------------------------


BAD_INPUT = [
    ("malformed JSON", '{"type": "session.initiate",', "malformed JSON"),
    ("not an object", "[1, 2]", "must be a JSON object"),
    ("missing type", '{"conversationId": "c"}', "string 'type'"),
    ("missing conversationId", '{"type": "session.initiate"}', "conversationId"),
    ("unsafe conversationId", '{"type": "session.initiate", "conversationId": "../x y"}',
     "conversation id"),
    ("wrong-typed field", '{"type": "session.initiate", "conversationId": "c", '
     '"supportedMediaFormats": 5}', "supportedMediaFormats"),
    ("unsupported media", '{"type": "session.initiate", "conversationId": "c", '
     '"supportedMediaFormats": ["audio/opus"]}', "audio/opus"),
    ("audio before the session", '{"type": "userStream.chunk", "conversationId": "c", '
     '"audioChunk": "AAAA"}', "before session.initiate"),
    ("resume of an unknown call", '{"type": "session.resume", "conversationId": "nobody"}',
     "session not found"),
]  # fmt: skip


@pytest.mark.parametrize(("case", "raw", "reason"), BAD_INPUT, ids=[c[0] for c in BAD_INPUT])
async def test_bad_input_gets_a_clear_error_and_other_calls_go_on(
    embedded: tuple[str, BridgeRuntime], case: str, raw: str, reason: str
) -> None:
    url, runtime = embedded
    good = AudioCodesClient(url, "good-call")
    await good.connect()
    await good.initiate()
    bad = AudioCodesClient(url, "c")
    await bad.connect()
    await bad.send_raw(raw)
    error = await bad.expect("session.error")
    assert reason in error["reason"]
    assert error["conversationId"] in (None, "c", "nobody")
    await good.say("12")
    await good.expect(lambda m: m.get("type") == "playStream.start" and m["streamId"] == "2")
    assert list(runtime.calls) == ["good-call"]


async def test_unknown_message_types_are_ignored_and_bad_activities_reported_alone(
    embedded: tuple[str, BridgeRuntime],
) -> None:
    url, runtime = embedded
    client = AudioCodesClient(url, "lenient")
    await client.connect()
    await client.initiate()
    await client.expect("playStream.stop")
    await client.send("session.newFeature", anything=1)
    await client.send("activities", activities=[
        {"type": "event", "name": "dtmf", "value": "X"},
        {"type": "event", "name": "dtmf", "value": "7"},
        "not an activity",
        {"type": "event", "name": "dtmf", "value": "8"},
    ])  # fmt: skip
    error = await client.expect("session.error")
    assert "activities[0]" in error["reason"] and "activities[2]" in error["reason"]
    assert "activities[1]" not in error["reason"] and "session.newFeature" not in error["reason"]
    state = runtime.calls["lenient"].state
    assert state is not None
    assert [t["content"] for t in state.conversation_history][-2:] == ["DTMF 7", "DTMF 8"]
    assert runtime.metrics.counters["ignored_messages"] == 1
    assert len(client.of_type("session.error")) == 1


@pytest.mark.parametrize(
    ("setup", "reason"), [("unknown", "session not found"), ("ended", "session has ended")]
)
async def test_a_refused_resume_says_why_in_the_error_and_the_close(
    embedded: tuple[str, BridgeRuntime], setup: str, reason: str
) -> None:
    url, runtime = embedded
    if setup == "ended":
        caller = AudioCodesClient(url, "gone")
        await caller.connect()
        await caller.initiate()
        await caller.hangup()
        await caller.closed()
        await runtime.settle()
    again = AudioCodesClient(url, "gone")
    await again.connect()
    error = await again.resume()
    assert error["type"] == "session.error" and error["reason"] == reason
    assert await again.closed() == 1000 and again.close_reason == f"resume refused: {reason}"


async def test_bad_audio_and_oversize_frames_are_refused(
    embedded: tuple[str, BridgeRuntime],
) -> None:
    url, _ = embedded
    client = AudioCodesClient(url, "c1")
    await client.connect()
    await client.initiate()
    await client.send("userStream.chunk", audioChunk="not base64!!")
    assert "base64" in (await client.expect("session.error"))["reason"]
    await client.send("userStream.chunk", audioChunk="A" * 5000)  # past MAX_FRAME_BYTES
    assert "exceeds 4096" in (await client.expect("session.error"))["reason"]
    await client.send("userStream.chunk", audioChunk="A" * 9000)  # past twice the limit
    assert await client.closed() == 1009


async def test_a_wrong_bearer_token_is_refused_with_401_before_accept(
    sim: RealtimeSimulator, tmp_path: Path
) -> None:
    settings = Settings(archive_dir=str(tmp_path), audiocodes_bot_token="s3cret")
    runtime = BridgeRuntime.build(settings, realtime_url=sim.url, schedule=False)
    async with hosted_bridge(runtime) as url:
        with pytest.raises(InvalidStatus) as refused:
            await AudioCodesClient(url, "c1", token="wrong").connect()
        assert refused.value.response.status_code == 401
        allowed = AudioCodesClient(url, "c1", token="s3cret")
        await allowed.connect()
        assert (await allowed.initiate())["type"] == "session.accepted"


async def test_health_stats_and_metrics_report_the_process(
    embedded: tuple[str, BridgeRuntime],
) -> None:
    url, runtime = embedded
    client = AudioCodesClient(url, "c1")
    await client.connect()
    await client.initiate()
    await client.expect("playStream.stop")
    await wait_until(lambda: _async_true(runtime.metrics.loop_lag_ms.total > 0))
    http = url.replace("ws://", "http://")
    async with httpx.AsyncClient() as web:
        health = (await web.get(f"{http}/health")).json()
        stats = (await web.get(f"{http}/stats")).json()
        metrics = (await web.get(f"{http}/metrics")).text
    assert health["ok"] and health["storage"]["backend"] == "memory"
    assert stats["live_calls"] == 1 and stats["counters"]["frames_out"] > 0
    assert "opus_bridge_live_calls 1" in metrics
    assert 'opus_bridge_relay_latency_ms_bucket{direction="to_caller",le="+Inf"}' in metrics
    assert 'opus_bridge_event_loop_lag_ms_bucket{le="+Inf"}' in metrics
    assert stats["event_loop_lag_ms"]["max"] is not None


async def test_health_is_red_when_redis_is_unreachable(sim: RealtimeSimulator) -> None:
    from tests.services import free_port

    settings = Settings(redis_url=f"redis://127.0.0.1:{free_port()}")
    runtime = BridgeRuntime.build(settings, realtime_url=sim.url)
    report = await runtime.health()
    await runtime.storage.close()
    assert not report["ok"] and not report["storage"]["ok"] and not report["broker"]["ok"]


async def test_concurrent_calls_do_not_share_state(embedded: tuple[str, BridgeRuntime]) -> None:
    url, runtime = embedded
    clients = [AudioCodesClient(url, f"par-{i}") for i in range(5)]
    for client in clients:
        await client.connect()
    await asyncio.gather(*(c.initiate() for c in clients))
    await asyncio.gather(*(c.say(str(i + 1) * 2) for i, c in enumerate(clients)))
    for i, client in enumerate(clients):
        await client.expect(lambda m: m.get("type") == "playStream.start" and m["streamId"] == "2")
        state = runtime.calls[f"par-{i}"].state
        assert state is not None
        await wait_until(lambda s=state, i=i: _async_true(any(
            t["content"] == str(i + 1) * 2 for t in s.conversation_history)))  # fmt: skip


async def _async_true(value: bool) -> bool:
    return value


async def test_local_vad_detects_turns_when_the_model_does_not(
    sim: RealtimeSimulator, tmp_path: Path
) -> None:
    settings = Settings(archive_dir=str(tmp_path), vad_mode="local")
    runtime = BridgeRuntime.build(settings, realtime_url=sim.url, schedule=False)
    async with hosted_bridge(runtime) as url:
        client = AudioCodesClient(url, "local-vad")
        await client.connect()
        await client.initiate()
        await client.expect("playStream.stop")
        await client.say("31")
        await client.expect(lambda m: m.get("type") == "playStream.start" and m["streamId"] == "2")
        received = sim.connections[-1].received
        state = runtime.calls["local-vad"].state
    assert sim.connections[-1].config["audio"]["input"]["turn_detection"] is None
    assert "input_audio_buffer.commit" in [e["type"] for e in received]
    assert state is not None and state.conversation_history[1]["content"] == "31"


async def test_a_call_survives_the_model_ending_its_session(
    embedded: tuple[str, BridgeRuntime], sim: RealtimeSimulator
) -> None:
    url, runtime = embedded
    client = AudioCodesClient(url, "long-call")
    await client.connect()
    await client.initiate()
    await client.expect("playStream.stop")
    await client.say("12")
    await client.expect("playStream.stop")
    await sim.drop_connections()  # the model's 60-minute limit, early
    await sim.wait_for(lambda s: len(s.connections) == 2 and len(s.connections[1].items) >= 3)
    await client.say("34")
    await client.expect(lambda m: m.get("type") == "playStream.start" and m["streamId"] == "3")
    replayed = [json.dumps(item) for item in sim.connections[1].items]
    assert any('"12"' in item for item in replayed)
    assert runtime.metrics.counters["model_reconnects"] == 1


async def test_calls_that_end_or_leave_leave_nothing_behind_in_the_bridge(
    embedded: tuple[str, BridgeRuntime],
) -> None:
    url, runtime = embedded
    for i in range(30):
        caller = AudioCodesClient(url, f"churn-{i}")
        await caller.connect()
        await caller.initiate()
        await caller.expect("playStream.stop")
        if i % 3 == 0:
            await caller.hangup()
            await caller.closed()
        elif i % 3 == 1:
            await caller.close()  # a drop: handed over, stored PAUSED
        else:
            await caller.end("done")
            await caller.closed()
    await wait_until(lambda: _async_true(not runtime.calls and not _realtime_tasks()))
    await runtime.settle()
    persister = runtime.persister.metrics()
    assert (persister.live_sessions, persister.dirty, persister.backlog) == (0, 0, 0)
    assert runtime.handover.waiting == 0 and runtime.metrics.counters["handoffs"] == 10


def _realtime_tasks() -> list[asyncio.Task[object]]:
    return [t for t in asyncio.all_tasks() if t.get_name().startswith("realtime-")]


async def test_the_service_hangs_up_a_live_call_in_process_on_the_embedded_default(
    embedded: tuple[str, BridgeRuntime],
) -> None:
    url, runtime = embedded
    caller = AudioCodesClient(url, "api-end")
    await caller.connect()
    await caller.initiate()
    await caller.expect("playStream.stop")
    assert await runtime.service.end_session("api-end", "ended by the API")
    hangup = await caller.expect("activities")
    assert hangup["activities"][0]["name"] == "hangup"
    assert await caller.closed() == 1000
    await runtime.settle()
    state = await runtime.storage.load("api-end")
    assert state is not None and state.status is SessionStatus.ENDED
    assert state.end_reason == "ended by the API"
    assert not await runtime.service.end_session("api-end")  # already ended


class UnreachableStorage:
    """A store that does not answer (the hand-off write fails)."""

    async def save_durable(self, snapshot: Snapshot, replicas: int, timeout_ms: int) -> SaveAck:
        raise StorageUnavailable("redis at 127.0.0.1:1 is unavailable")


async def test_a_hand_off_storage_refuses_goes_out_through_the_persister(
    embedded: tuple[str, BridgeRuntime],
) -> None:
    url, runtime = embedded
    caller = AudioCodesClient(url, "fallback")
    await caller.connect()
    await caller.initiate()
    await caller.expect("playStream.stop")
    runtime.handover.storage = UnreachableStorage()  # type: ignore[assignment]
    await caller.close()
    await wait_until(lambda: _async_true(not runtime.calls))
    await runtime.settle()  # the persister's copy is applied by the local executor
    state = await runtime.storage.load("fallback")
    assert state is not None and state.status is SessionStatus.PAUSED
    assert runtime.metrics.counters["handoff_failures"] == 1
    assert runtime.persister.metrics().live_sessions == 0
