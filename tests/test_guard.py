"""Closed by default: no open endpoint beyond loopback, operator endpoints behind a token,
limits on failed credentials and on calls per instance."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import httpx
import pytest
from twilio.request_validator import RequestValidator
from websockets.exceptions import InvalidStatus

from bridges.call.runtime import BridgeRuntime
from bridges.hosting import hosted_bridge
from bridges.sim.server import RealtimeSimulator
from bridges.sim.telephony import AudioCodesClient, TwilioClient
from sessions.settings import Settings
from tests.conftest import wait_for
from tests.services import free_port
from tests.test_demo import BASE_ENV
from tests.workers import ROOT

CALL = "CA0123456789abcdef0123456789abcdef"


def serve(*args: str, env: dict[str, str], seconds: float = 30) -> subprocess.Popen[str]:
    cmd = [sys.executable, "-m", "cli.main", "serve", "--port", str(free_port()), *args]
    return subprocess.Popen(
        cmd,
        cwd=ROOT,
        env=BASE_ENV | env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def stop(proc: subprocess.Popen[str]) -> str:
    proc.terminate()
    out, _ = proc.communicate(timeout=20)
    return out


def test_serve_refuses_to_listen_beyond_loopback_with_an_open_endpoint(tmp_path: Path) -> None:
    env = {"ARCHIVE_DIR": str(tmp_path)}
    proc = serve("--host", "0.0.0.0", env=env)
    out, _ = proc.communicate(timeout=30)
    assert proc.returncode == 2
    assert "AUDIOCODES_BOT_TOKEN" in out and "TWILIO_AUTH_TOKEN" in out
    assert "ALLOW_UNAUTHENTICATED" in out and "Traceback" not in out
    half = serve("--host", "0.0.0.0", env=env | {"AUDIOCODES_BOT_TOKEN": "t"})
    out, _ = half.communicate(timeout=30)
    assert half.returncode == 2 and "TWILIO_AUTH_TOKEN" in out and "AUDIOCODES_BOT" not in out


@pytest.mark.parametrize(
    "extra",
    [
        {"AUDIOCODES_BOT_TOKEN": "a", "TWILIO_AUTH_TOKEN": "t"},
        {"AUDIOCODES_BOT_TOKEN": "a", "TWILIO_ENABLED": "false"},
        {"ALLOW_UNAUTHENTICATED": "true"},
    ],
    ids=["both tokens", "twilio off", "explicit opt-out"],
)
def test_serve_starts_beyond_loopback_when_every_endpoint_is_closed_or_opted_out(
    tmp_path: Path, extra: dict[str, str]
) -> None:
    proc = serve("--host", "0.0.0.0", env={"ARCHIVE_DIR": str(tmp_path)} | extra)
    assert proc.stdout is not None
    lines: list[str] = []
    wait_for(lambda: _read_until(proc, lines, "Uvicorn running"), timeout_s=30)
    out = "".join(lines) + stop(proc)
    opted_out = "ALLOW_UNAUTHENTICATED" in extra
    assert ("WITHOUT authentication" in out) is opted_out
    assert "OPERATOR_TOKEN" in out  # /stats and /metrics are closed without it


def _read_until(proc: subprocess.Popen[str], lines: list[str], text: str) -> bool:
    assert proc.stdout is not None
    if proc.poll() is not None:
        raise AssertionError("serve exited: " + "".join(lines) + proc.stdout.read())
    lines.append(proc.stdout.readline())
    return text in lines[-1]


async def test_operator_endpoints_want_the_operator_token_beyond_loopback(
    sim: RealtimeSimulator, tmp_path: Path
) -> None:
    settings = Settings(archive_dir=str(tmp_path), operator_token="op-secret")
    runtime = BridgeRuntime.build(settings, realtime_url=sim.url, schedule=False)
    async with hosted_bridge(runtime, loopback_only=False) as url:
        http = url.replace("ws://", "http://")
        good = {"Authorization": "Bearer op-secret"}
        async with httpx.AsyncClient() as web:
            for path in ("/stats", "/metrics"):
                assert (await web.get(http + path)).status_code == 401
                assert (
                    await web.get(http + path, headers={"Authorization": "Bearer x"})
                ).status_code == 401
                assert (await web.get(http + path, headers=good)).status_code == 200
            assert (await web.get(http + "/health")).json() == {"ok": True}
            detail = (await web.get(http + "/health", headers=good)).json()
    assert detail["ok"] and "instance" in detail and "storage" in detail


async def test_without_an_operator_token_the_endpoints_answer_only_on_loopback(
    sim: RealtimeSimulator, tmp_path: Path
) -> None:
    settings = Settings(archive_dir=str(tmp_path))
    runtime = BridgeRuntime.build(settings, realtime_url=sim.url, schedule=False)
    async with hosted_bridge(runtime, loopback_only=False) as url, httpx.AsyncClient() as web:
        response = await web.get(url.replace("ws://", "http://") + "/metrics")
    assert response.status_code == 401 and "OPERATOR_TOKEN" in response.text


async def test_failed_credentials_are_counted_and_capped_per_client(
    sim: RealtimeSimulator, tmp_path: Path
) -> None:
    settings = Settings(
        archive_dir=str(tmp_path), audiocodes_bot_token="right", auth_failure_limit=3
    )
    runtime = BridgeRuntime.build(settings, realtime_url=sim.url, schedule=False)
    async with hosted_bridge(runtime) as url:
        for _ in range(3):
            with pytest.raises(InvalidStatus) as refused:
                await AudioCodesClient(url, "c1", token="wrong").connect()
            assert refused.value.response.status_code == 401
        with pytest.raises(InvalidStatus) as capped:
            await AudioCodesClient(url, "c1", token="right").connect()
        assert capped.value.response.status_code == 429
    assert runtime.metrics.counters["refused_upgrades_audiocodes"] == 4


async def test_calls_past_max_calls_are_refused_with_the_protocols_refusal(
    sim: RealtimeSimulator, tmp_path: Path
) -> None:
    settings = Settings(archive_dir=str(tmp_path), max_calls=2)
    runtime = BridgeRuntime.build(settings, realtime_url=sim.url, schedule=False)
    async with hosted_bridge(runtime) as url:
        for cid in ("full-1", "full-2"):
            caller = AudioCodesClient(url, cid)
            await caller.connect()
            assert (await caller.initiate())["type"] == "session.accepted"
        third = AudioCodesClient(url, "full-3")
        await third.connect()
        refusal = await third.initiate()
        assert refusal["type"] == "session.error" and "MAX_CALLS" in refusal["reason"]
        assert await third.closed() == 1000
        stream = TwilioClient(url, CALL, "MZ1")
        await stream.connect()
        await stream.start()
        assert await stream.closed() == 1013 and "MAX_CALLS" in str(stream.close_reason)
        assert list(runtime.calls) == ["full-1", "full-2"]
        assert runtime.metrics.counters["calls_refused_full"] == 2


async def test_a_switched_off_endpoint_is_not_there(sim: RealtimeSimulator, tmp_path: Path) -> None:
    settings = Settings(archive_dir=str(tmp_path), twilio_enabled=False, twilio_auth_token="s3cret")
    runtime = BridgeRuntime.build(settings, realtime_url=sim.url, schedule=False)
    async with hosted_bridge(runtime) as url:
        signature = RequestValidator("s3cret").compute_signature(f"{url}/ws/twilio", {})
        with pytest.raises(InvalidStatus) as refused:
            await TwilioClient(
                url, CALL, "MZ1", headers={"X-Twilio-Signature": signature}
            ).connect()
        assert refused.value.response.status_code == 404
