"""No turn lost across a resume, with the full stack as separate processes.

Two bridges (`opus-sessions serve` subprocesses) share the real Redis; the Celery worker is a
subprocess the test starts only when it says so. The model is the strict simulator, served
from this process; the callers are AudioCodes and Twilio test clients.
"""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest

from bridges.sim.server import RealtimeSimulator
from bridges.sim.telephony import AudioCodesClient, TwilioClient, twilio_status_callback
from sessions.settings import Settings
from tests.conftest import wait_until
from tests.services import delete_prefix, free_port
from tests.workers import ROOT, broker_app, subprocess_worker, worker_env

CALL = "CA0123456789abcdef0123456789abcdef"
HANDOFF_MS = 800


@pytest.fixture
def stack(redis_url: str, key_prefix: str, tmp_path: Path) -> Iterator[dict[str, str]]:
    """The environment of this test's processes: its own key and broker prefixes."""
    queues = f"test-q-{uuid.uuid4().hex[:8]}:"
    env = {
        "REDIS_URL": redis_url,
        "SESSION_PREFIX": key_prefix,
        "CELERY_KEY_PREFIX": queues,
        "ARCHIVE_DIR": str(tmp_path / "archive"),
        "RESUME_HANDOFF_MS": str(HANDOFF_MS),
        "SAVE_INTERVAL_MS": "20",
        "PYTHONUNBUFFERED": "1",
    }
    yield env
    delete_prefix(redis_url, queues)


@asynccontextmanager
async def bridge(
    env: dict[str, str], model_url: str, log: Path
) -> AsyncIterator[tuple[str, subprocess.Popen[bytes]]]:
    """`opus-sessions serve` on a free port; its ws:// URL once /health answers."""
    port = free_port()
    cmd = [sys.executable, "-m", "cli.main", "serve", "--port", str(port)]
    with open(log, "ab") as out:
        proc = subprocess.Popen(
            cmd,
            cwd=ROOT,
            env=worker_env(env | {"OPENAI_REALTIME_URL": model_url}),
            stdout=out,
            stderr=out,
        )
    try:
        await wait_until(lambda: _healthy(port, proc, log), timeout_s=30, poll_s=0.1)
        yield f"ws://127.0.0.1:{port}", proc
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=20)


async def _healthy(port: int, proc: subprocess.Popen[bytes], log: Path) -> bool:
    if proc.poll() is not None:
        raise AssertionError(f"bridge exited ({proc.returncode}):\n{log.read_text()[-3000:]}")
    try:
        async with httpx.AsyncClient() as web:
            return (await web.get(f"http://127.0.0.1:{port}/health", timeout=1)).status_code == 200
    except httpx.HTTPError:
        return False


@contextmanager
def worker(env: dict[str, str], log: Path) -> Iterator[None]:
    settings = Settings(redis_url=env["REDIS_URL"], celery_key_prefix=env["CELERY_KEY_PREFIX"])
    with subprocess_worker(broker_app(settings), env, log, queues="persistence,archive"):
        yield


async def three_turns(caller: AudioCodesClient) -> None:
    await caller.connect()
    await caller.initiate()
    await caller.expect("playStream.stop")
    for n, digits in enumerate(("11", "22", "33"), start=2):
        await caller.say(digits)
        await caller.expect(
            lambda m, n=n: m.get("type") == "playStream.stop" and m["streamId"] == str(n)
        )


async def published(url: str) -> bool:
    """The bridge's persister has sent everything it had (to the broker)."""
    async with httpx.AsyncClient() as web:
        stats = (await web.get(url.replace("ws://", "http://") + "/stats")).json()
    return bool(stats["persister"]["backlog"] == 0)


def archived(env: dict[str, str], cid: str) -> dict[str, Any] | None:
    found = next(Path(env["ARCHIVE_DIR"]).rglob(f"{cid}.json"), None)
    return json.loads(found.read_text()) if found else None


def user_turns(turns: list[dict[str, Any]]) -> list[str]:
    return [t["content"] for t in turns if t["role"] == "user"]


async def test_a_resume_with_the_workers_down_replays_every_turn(
    stack: dict[str, str], tmp_path: Path
) -> None:
    async with RealtimeSimulator() as sim:
        async with (
            bridge(stack, sim.url, tmp_path / "a.log") as (url_a, _),
            bridge(stack, sim.url, tmp_path / "b.log") as (url_b, _),
        ):
            caller = AudioCodesClient(url_a, "drop-1")
            await three_turns(caller)
            await caller.close()  # the WebSocket drops; no worker runs anywhere
            again = AudioCodesClient(url_b, "drop-1")
            await again.connect()
            assert (await again.resume())["type"] == "session.accepted"
            replayed = sim.connections[-1]
            await sim.wait_for(lambda s: len(replayed.items) >= 8)
            texts = [
                item["content"][0].get("text")
                for item in replayed.items
                if item["type"] == "message"
            ]
            assert {"11", "22", "33", "you said 33"} <= set(texts)
            await again.say("44")
            await again.expect("playStream.stop")
            await again.hangup()
            await again.closed()
        with worker(stack, tmp_path / "worker.log"):
            await wait_until(lambda: _async(archived(stack, "drop-1") is not None), timeout_s=30)
    record = archived(stack, "drop-1")
    assert record is not None and record["resumed_count"] == 1
    assert user_turns(record["transcript"]) == ["11", "22", "33", "44"]
    assert "drop-1" in (tmp_path / "a.log").read_text()  # the first bridge logged the drop


async def test_a_killed_bridge_loses_no_turn_once_the_workers_come_back(
    stack: dict[str, str], tmp_path: Path
) -> None:
    async with RealtimeSimulator() as sim:
        async with (
            bridge(stack, sim.url, tmp_path / "a.log") as (url_a, proc_a),
            bridge(stack, sim.url, tmp_path / "b.log") as (url_b, _),
        ):
            caller = AudioCodesClient(url_a, "kill-1")
            await three_turns(caller)
            await wait_until(lambda: published(url_a))  # its saves wait in the broker
            proc_a.kill()  # SIGKILL: no hand-off
            proc_a.wait(timeout=10)
            again = AudioCodesClient(url_b, "kill-1")
            await again.connect()
            started = time.monotonic()
            assert (await again.resume())["type"] == "session.accepted"
            assert time.monotonic() - started >= HANDOFF_MS / 1000  # it waited for a hand-off
            await again.say("44")
            await again.expect("playStream.stop")
            await again.hangup()
            await again.closed()
            async with httpx.AsyncClient() as web:
                metrics = (await web.get(url_b.replace("ws://", "http://") + "/metrics")).text
            assert "opus_bridge_resume_handoff_timeouts_total 1" in metrics
        assert "never handed the call over" in (tmp_path / "b.log").read_text()
        with worker(stack, tmp_path / "worker.log"):
            await wait_until(lambda: _async(_has_turns(stack, "kill-1", 4)), timeout_s=30)
    record = archived(stack, "kill-1")
    assert record is not None
    assert user_turns(record["transcript"]) == ["11", "22", "33", "44"]  # each exactly once
    ids = [t["id"] for t in record["transcript"]]
    assert len(ids) == len(set(ids))


def _has_turns(env: dict[str, str], cid: str, count: int) -> bool:
    record = archived(env, cid)
    return record is not None and len(user_turns(record["transcript"])) >= count


async def _async(value: bool) -> bool:
    return value


async def test_sessions_end_hangs_up_a_live_call_on_its_bridge_within_a_second(
    stack: dict[str, str], tmp_path: Path
) -> None:
    async with RealtimeSimulator() as sim:
        async with bridge(stack, sim.url, tmp_path / "a.log") as (url, _):
            caller = AudioCodesClient(url, "live-1")
            await caller.connect()
            await caller.initiate()
            await caller.expect("playStream.stop")
            done = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "cli.main", "--json", "sessions", "end", "live-1",
                cwd=ROOT, env=worker_env(stack), stdout=asyncio.subprocess.PIPE,
            )  # fmt: skip
            stdout, _ = await asyncio.wait_for(done.communicate(), 60)
            ended_s = time.monotonic()
            assert done.returncode == 0
            outcome = json.loads(stdout)
            assert outcome["live_call"] is True and outcome["holder"].startswith("bridge-")
            hangup = await caller.expect("activities", timeout_s=1)
            assert hangup["activities"][0]["name"] == "hangup"
            assert await caller.closed(timeout_s=1) == 1000
            assert time.monotonic() - ended_s < 1
            model = sim.connections[-1]
            await sim.wait_for(lambda s: model.closed)  # nothing answers a later turn
            answered = model.received_types().count("response.create")
        assert answered == 1  # the greeting only
        with worker(stack, tmp_path / "worker.log"):
            await wait_until(lambda: _async(archived(stack, "live-1") is not None), timeout_s=30)
    record = archived(stack, "live-1")
    assert record is not None and record["end_reason"] == "ended by operator"


async def test_a_twilio_stop_then_a_new_stream_resumes_and_the_status_callback_ends_it(
    stack: dict[str, str], tmp_path: Path
) -> None:
    async with RealtimeSimulator() as sim:
        async with (
            bridge(stack, sim.url, tmp_path / "a.log") as (url_a, _),
            bridge(stack, sim.url, tmp_path / "b.log") as (url_b, _),
        ):
            first = TwilioClient(url_a, CALL, "MZ1")
            await first.connect()
            await first.start({"caller": "+15550100"})
            await first.expect("mark")
            await first.say("123")
            await first.expect(lambda m: m.get("event") == "mark" and m["mark"]["name"] == "bot-2")
            await first.stop()
            await first.closed()
            second = TwilioClient(url_b, CALL, "MZ2")  # <Connect action> reaches the other one
            await second.connect()
            await second.start({"caller": "+15550100"})
            await sim.wait_for(lambda s: len(s.connections) == 2)
            replayed = sim.connections[-1]
            await sim.wait_for(lambda s: len(replayed.items) >= 4)
            assert "you said 123" in json.dumps(replayed.items)
            await second.say("45")
            await second.expect("mark")
            assert await twilio_status_callback(url_a, CALL, "completed") == 204  # not the holder
            assert await second.closed() == 1000
        with worker(stack, tmp_path / "worker.log"):
            await wait_until(lambda: _async(archived(stack, CALL) is not None), timeout_s=30)
    record = archived(stack, CALL)
    assert record is not None and record["end_reason"] == "call completed"
    assert user_turns(record["transcript"]) == ["123", "45"] and record["resumed_count"] == 1
