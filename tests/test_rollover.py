"""A call that outlives model sessions rolls over to new ones at turn boundaries, unheard."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from bridges.call.runtime import BridgeRuntime
from bridges.hosting import hosted_bridge
from bridges.model import RealtimeClient, RealtimeConfig
from bridges.model.client import OpenSession
from bridges.model.events import SessionInfo
from bridges.sim.server import RealtimeSimulator
from bridges.sim.speech import speech_frames
from bridges.sim.telephony import AudioCodesClient
from sessions.settings import Settings
from tests.conftest import wait_until

MAX_S = 1.5


async def _rollovers(runtime: BridgeRuntime, count: int) -> bool:
    return runtime.metrics.counters["model_rollovers"] >= count


async def test_a_call_rolls_over_three_times_with_its_history_and_no_audio_lost(
    tmp_path: Path,
) -> None:
    async with RealtimeSimulator(max_session_s=60) as sim:
        settings = Settings(archive_dir=str(tmp_path), model_session_max_s=MAX_S)
        runtime = BridgeRuntime.build(settings, realtime_url=sim.url, schedule=False)
        async with hosted_bridge(runtime) as url:
            caller = AudioCodesClient(url, "long-call")
            await caller.connect()
            await caller.initiate()
            await caller.expect("playStream.stop")
            said = ["11", "22", "33", "44"]
            for index, digits in enumerate(said):
                await caller.say(digits)
                stream = str(index + 2)
                await caller.expect(
                    lambda m, s=stream: m.get("type") == "playStream.stop" and m["streamId"] == s
                )
                if index < 3:
                    await wait_until(lambda n=index + 1: _rollovers(runtime, n), timeout_s=10)
            bridge = runtime.calls["long-call"]
            state = bridge.state
            assert state is not None and state.realtime is not None
            model = bridge.model  # type: ignore[attr-defined]
            dropped = model.dropped_audio_frames
            await caller.hangup()
            await caller.closed()
    assert state.realtime.rollovers == 3 and runtime.metrics.counters["model_reconnects"] == 0
    sessions = sim.connections
    appended = [e for c in sessions for e in c.received if e["type"] == "input_audio_buffer.append"]
    assert dropped == 0  # no caller audio dropped: every frame reached one of the sessions
    assert len(appended) == sum(len(speech_frames(digits, "raw/lpcm16")) for digits in said)
    assert len(sessions) == 4 and all(c.closed for c in sessions)
    replayed = [len(c.items) for c in sessions[1:]]
    assert replayed == sorted(replayed) and replayed[0] > 2  # each got the whole history so far
    for index, connection in enumerate(sessions[1:], start=1):
        texts = json.dumps(connection.items)
        assert all(f'"{digits}"' in texts for digits in said[:index])
    cancelled = [
        d
        for c in sessions
        for d in c.sent_of("response.done")
        if d["response"]["status"] != "completed"
    ]
    assert cancelled == []  # no bot audio cut
    starts, stops = caller.of_type("playStream.start"), caller.of_type("playStream.stop")
    assert len(starts) == len(stops) == 5
    assert [t["content"] for t in state.conversation_history if t["role"] == "user"] == said
    assert sim.violations() == []


async def test_without_a_turn_boundary_the_rollover_happens_at_the_deadline_anyway(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async with RealtimeSimulator(pace=True, delta_ms=20) as sim:
        events: list[dict[str, object]] = []

        async def record(event: dict[str, object]) -> None:
            events.append(event)

        config = RealtimeConfig(url=sim.url, session_max_s=0.6)
        client = RealtimeClient(config, record)
        async with client:
            from bridges.call.rollover import Rollover

            class Busy:  # a call that is never at a boundary
                closed = False
                model = client
                state = None

                def at_boundary(self) -> bool:
                    return False

                def history_marker(self) -> tuple[int, int]:
                    return (0, 0)

            rollover = Rollover(Busy())  # type: ignore[arg-type]
            rollover.start()
            await wait_until(lambda: _async(client.rollovers >= 1), timeout_s=5)
            await rollover.stop()
    assert "rolling over mid-turn" in caplog.text
    assert [e["type"] for e in events].count("client.rolled_over") >= 1


async def _async(value: bool) -> bool:
    return value


async def test_the_session_deadline_follows_the_cap_and_the_servers_announcement() -> None:
    async with RealtimeSimulator(max_session_s=40) as sim:
        client = RealtimeClient(RealtimeConfig(url=sim.url, session_max_s=3300), _ignore)
        async with client:
            left = client.session_deadline_s - asyncio.get_running_loop().time()
    assert 30 < left <= 40 * 0.9 + 1  # the server's 40 s, less a margin, beat the 3300 s cap


async def _ignore(event: dict[str, object]) -> None:
    return None


@pytest.mark.parametrize(
    ("expires_in_s", "expected_s"),
    [
        (3600, 3300),  # OpenAI's 60 minutes announced: the cap (55 minutes) comes first
        (1800, 1770),  # a shorter announced life: 30 s before its end
        (40, 36),  # a very short one: a tenth of it before its end
        (-600, 3300),  # announced in the past (clocks apart): only the cap counts
        (None, 3300),  # nothing announced
    ],
)
def test_the_deadline_never_falls_at_or_before_the_sessions_start(
    expires_in_s: int | None, expected_s: float
) -> None:
    opened_wall_s = 1_800_000_000.0
    expires_at = None if expires_in_s is None else int(opened_wall_s) + expires_in_s
    session = OpenSession(
        None,  # type: ignore[arg-type]
        [],
        SessionInfo(expires_at=expires_at),
        opened_s=100.0,
        opened_wall_s=opened_wall_s,
    )
    assert session.deadline_s(3300) == pytest.approx(100.0 + expected_s)
