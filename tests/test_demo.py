"""The demo, `serve` and `simulator` commands, run as the user runs them: subprocesses."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest
from websockets.sync.client import connect

from tests.conftest import wait_for
from tests.services import delete_prefix, free_port

ROOT = Path(__file__).resolve().parent.parent
OURS = ("REDIS_", "SESSION_", "CELERY_", "ARCHIVE_", "PYTEST")
BASE_ENV = {k: v for k, v in os.environ.items() if not k.startswith(OURS)}


def cli(
    *args: str, env: dict[str, str], timeout_s: float = 120
) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "cli.main", *args], cwd=ROOT, env=BASE_ENV | env,
                          capture_output=True, text=True, timeout=timeout_s)  # fmt: skip


Demo = tuple[subprocess.CompletedProcess[str], Path]


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Demo:
    """One run of `opus-sessions demo` on the embedded default; its archive directory."""
    archive = tmp_path_factory.mktemp("archive")
    done = cli("demo", env={"ARCHIVE_DIR": str(archive)})
    assert done.returncode == 0, done.stderr
    return done, archive


def test_the_demo_on_the_embedded_default_prints_the_resume_and_the_archive(demo: Demo) -> None:
    done, archive = demo
    out = done.stdout
    assert "embedded default" in out
    assert "-> session.initiate" in out and "<- session.accepted" in out
    assert "websocket dropped mid-call" in out and "-> session.resume" in out
    assert "<- session.resumed" in out and "greeting=not repeated" in out
    assert "kinds=system,assistant,user,assistant,user,function_call,function_call_output" in out
    assert "call archived" in out and str(archive) in out
    assert "GA session set up" in out and "audio_in=audio/pcm" in out
    assert "3 caller turns, 3 bot answers (after the greeting), 1 DTMF digit; resumed 1x" in out
    assert "model: openai gpt-realtime, voice marin, audio audio/pcm in / audio/pcm out" in out
    assert re.search(r"tokens: [1-9]\d* input .* [1-9]\d* output .* over 5 responses", out)
    archived = list(archive.rglob("demo-*.json"))
    assert len(archived) == 1
    record = json.loads(archived[0].read_text())
    assert record["resumed_count"] == 1 and record["end_reason"] == "caller hung up"
    assert record["usage"]["responses"] == 5 and record["realtime"]["voice"] == "marin"


def test_the_demo_speaks_to_newcomers_not_in_jargon_or_python_reprs(demo: Demo) -> None:
    out = demo[0].stdout
    assert "vaic" not in out and "AudioCodes -> session.initiate" in out
    assert "AudioCodes -> activities  DTMF digit" in out
    assert "AudioCodes -> activities  hangup" in out
    assert "expectAudioMessages=yes, supportedMediaFormats=raw/lpcm16" in out
    assert not re.search(r"[\[{]'|'[\]}]|=True|=False", out), out
    assert " turns," not in out.replace("caller turns,", "")  # no total counting DTMF as a turn


def test_the_readme_shows_the_demo_as_it_prints_now(demo: Demo) -> None:
    done, archive = demo
    as_by_default = done.stdout.replace(str(archive), "var/archive")  # the default ARCHIVE_DIR
    printed = {shape(line) for line in as_by_default.splitlines()}
    readme = (ROOT / "README.md").read_text()
    example = readme.split("An abridged run:\n\n```\n", 1)[1].split("```", 1)[0]
    shown = [line for line in example.splitlines() if line.strip() != "..."]
    assert len(shown) > 15 and [line for line in shown if shape(line) not in printed] == []


def shape(line: str) -> str:
    """A demo line without what changes between runs: times, ports, ids, counts, dates."""
    line = re.sub(r"(demo|bridge)-[0-9a-f]{8}", r"\1-ID", line)
    return " ".join(re.sub(r"\d+(\.\d+)?", "N", line).split())


def test_the_twilio_demo_passes_mulaw_through_as_pcmu(tmp_path: Path) -> None:
    done = cli("demo", "--protocol", "twilio", env={"ARCHIVE_DIR": str(tmp_path)})
    assert done.returncode == 0, done.stderr
    assert (
        "audio_in=audio/pcmu" in done.stdout
        and "audio audio/pcmu in / audio/pcmu out" in done.stdout
    )
    assert "Twilio     -> dtmf  DTMF digit" in done.stdout and "twilio    " not in done.stdout
    assert "<- mark  name=bot-1" in done.stdout and "{'" not in done.stdout


def test_the_demo_runs_on_redis_with_an_in_process_worker(
    redis_url: str, key_prefix: str, tmp_path: Path
) -> None:
    queue_prefix = key_prefix.rstrip(":") + "-q:"
    env = {"REDIS_URL": redis_url, "SESSION_PREFIX": key_prefix,
           "CELERY_KEY_PREFIX": queue_prefix, "ARCHIVE_DIR": str(tmp_path)}  # fmt: skip
    try:
        done = cli("--json", "demo", "--with-worker", env=env)
    finally:
        delete_prefix(redis_url, queue_prefix)
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert result["resumed_count"] == 1 and result["turns"] == 8
    assert (result["caller_turns"], result["bot_answers"], result["dtmf_digits"]) == (3, 3, 1)
    assert result["model"]["model"] == "gpt-realtime" and result["usage"]["output_tokens"] > 0
    assert Path(result["archive"]).is_file()


@contextmanager
def running(*args: str, env: dict[str, str]) -> Iterator[subprocess.Popen[str]]:
    proc = subprocess.Popen([sys.executable, "-m", "cli.main", *args], cwd=ROOT,
                            env=BASE_ENV | env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)  # fmt: skip
    try:
        yield proc
    finally:
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=20)


def test_serve_answers_health_and_stops_cleanly(tmp_path: Path) -> None:
    port = free_port()
    with running("serve", "--port", str(port), env={"ARCHIVE_DIR": str(tmp_path)}) as proc:
        url = f"http://127.0.0.1:{port}/health"
        wait_for(lambda: _answers(url) or proc.poll() is not None, timeout_s=30)
        health = httpx.get(url).json()
        assert health["ok"] and health["storage"]["backend"] == "memory"
    assert proc.returncode == 0


def _answers(url: str) -> bool:
    try:
        return httpx.get(url, timeout=1).status_code == 200
    except httpx.HTTPError:
        return False


def test_the_simulator_command_serves_the_realtime_protocol() -> None:
    port = free_port()
    with running("simulator", "--port", str(port), env={}):
        url = f"ws://127.0.0.1:{port}/v1/realtime"
        wait_for(lambda: _ws_answers(url), timeout_s=30)
        with connect(url) as ws:
            assert json.loads(ws.recv())["type"] == "session.created"


def _ws_answers(url: str) -> bool:
    try:
        with connect(url, open_timeout=1):
            return True
    except OSError:
        return False
