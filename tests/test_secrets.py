"""No secret in any output: every command, with secrets planted in every secret-bearing setting.

Each secret is a distinct marker, planted once in a valid form (the services it names are
not there, so every command takes its error path) and once in an invalid form (the settings
refuse it); every command's stdout and stderr is searched for every marker.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tests.services import free_port
from tests.workers import ROOT

OURS = ("REDIS_", "SESSION_", "CELERY_", "ARCHIVE_", "OPENAI_", "AZURE_", "PYTEST", "MODEL_")
BASE_ENV = {k: v for k, v in os.environ.items() if not k.startswith(OURS)}

VALID = {
    "REDIS_URL": "redis://opus:SecretRedisUrl1@127.0.0.1:1/0",
    "REDIS_PASSWORD": "SecretRedisPassword2",
    "CELERY_BROKER_URL": "redis://:SecretBrokerUrl3@127.0.0.1:1/0",
    "ARCHIVE_URL": "postgresql://opus:SecretArchiveUrl4@127.0.0.1:1/opus",
    "ARCHIVE_PASSWORD": "SecretArchivePassword5",
    "OPENAI_API_KEY": "sk-SecretOpenAiKey6",
    "AZURE_OPENAI_API_KEY": "SecretAzureKey7",
    "AZURE_OPENAI_AD_TOKEN": "SecretEntraToken8",
    "AUDIOCODES_BOT_TOKEN": "SecretBotToken9",
    "TWILIO_AUTH_TOKEN": "SecretTwilioToken10",
    "OPERATOR_TOKEN": "SecretOperatorToken11",
}
INVALID = {
    "REDIS_URL": "http://opus:SecretBadRedis12@127.0.0.1:1/0",
    "ARCHIVE_URL": "mysql://opus:SecretBadArchive13@127.0.0.1:1/opus",
    "OPENAI_REALTIME_URL": "http://user:SecretBadRealtime14@127.0.0.1:1/v1",
    "AZURE_OPENAI_ENDPOINT": "ftp://user:SecretBadAzure15@example.org",
    "SESSION_TTL": "SecretNotANumber16",
}
MARKERS = [f"Secret{name}{n}" for n, name in enumerate(
    ["RedisUrl", "RedisPassword", "BrokerUrl", "ArchiveUrl", "ArchivePassword", "OpenAiKey",
     "AzureKey", "EntraToken", "BotToken", "TwilioToken", "OperatorToken", "BadRedis",
     "BadArchive", "BadRealtime", "BadAzure", "NotANumber"], start=1)]  # fmt: skip
COMMANDS = [
    ["doctor"],
    ["stats"],
    ["sessions", "list"],
    ["sessions", "show", "c1"],
    ["sessions", "end", "c1"],
    ["archive", "export", "--since", "2020-01-01"],
    ["--json", "stats"],
]


def run(args: list[str], env: dict[str, str], timeout_s: float = 60) -> str:
    done = subprocess.run(
        args, cwd=ROOT, env=BASE_ENV | env, capture_output=True, text=True, timeout=timeout_s
    )
    return done.stdout + done.stderr


def briefly(args: list[str], env: dict[str, str], seconds: float = 4) -> str:
    """A long-running process's output over its first seconds (then SIGTERM)."""
    proc = subprocess.Popen(
        args,
        cwd=ROOT,
        env=BASE_ENV | env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        out, _ = proc.communicate(timeout=seconds)
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=30)
    return out


def leaked(output: str) -> list[str]:
    return [marker for marker in MARKERS if marker in output]


@pytest.mark.parametrize("form", ["valid", "invalid"])
@pytest.mark.parametrize("command", COMMANDS, ids=" ".join)
def test_no_command_prints_a_secret(form: str, command: list[str]) -> None:
    env = VALID if form == "valid" else VALID | INVALID
    output = run([sys.executable, "-m", "cli.main", *command], env)
    assert output.strip() and leaked(output) == [], output


@pytest.mark.parametrize("form", ["valid", "invalid"])
def test_serve_prints_no_secret(form: str) -> None:
    env = VALID if form == "valid" else VALID | INVALID
    port = str(free_port())
    output = briefly(
        [sys.executable, "-m", "cli.main", "serve", "--host", "0.0.0.0", "--port", port], env
    )
    assert output.strip() and leaked(output) == [], output


@pytest.mark.parametrize("form", ["valid", "invalid"])
@pytest.mark.parametrize("program", ["worker", "beat"])
def test_the_worker_and_beat_print_no_secret(form: str, program: str, tmp_path: Path) -> None:
    env = VALID if form == "valid" else VALID | INVALID
    extra = ["--schedule", str(tmp_path / "schedule")] if program == "beat" else []
    cmd = [sys.executable, "-m", "celery", "-A", "workers.app", program, *extra]
    output = briefly(cmd, env | {"PYTHONPATH": str(ROOT)}, seconds=6)
    assert output.strip() and leaked(output) == [], output
    if form == "invalid":
        assert "Traceback" not in output and output.startswith("error: invalid configuration")
