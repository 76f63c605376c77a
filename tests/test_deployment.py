"""The deployment files match the code: every setting documented, the compose stack sound."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml

from sessions.settings import Settings

ROOT = Path(__file__).resolve().parent.parent
ENV_NAMES = sorted(str(f.validation_alias) for f in Settings.model_fields.values())


def compose() -> dict[str, Any]:
    return dict(yaml.safe_load((ROOT / "docker-compose.yml").read_text()))


def test_every_setting_is_in_env_example_and_the_readme() -> None:
    example = (ROOT / ".env.example").read_text()
    readme = (ROOT / "README.md").read_text()
    documented = set(re.findall(r"^([A-Z_]+)=", example, re.MULTILINE))
    assert set(ENV_NAMES) <= documented
    missing = [name for name in ENV_NAMES if f"`{name}`" not in readme]
    assert missing == []


REQUIRED = {"FLOWER_BASIC_AUTH": "u:p", "POSTGRES_PASSWORD": "pw", "REDIS_PASSWORD": "rp",
            "AUDIOCODES_BOT_TOKEN": "a", "TWILIO_AUTH_TOKEN": "t"}  # fmt: skip


def test_the_stack_requires_every_secret_and_redis_wants_its_acl_user() -> None:
    text = (ROOT / "docker-compose.yml").read_text()
    for name in REQUIRED:
        assert f"${{{name}:?" in text, name
    assert f"${{{'AUDIOCODES_BOT_TOKEN'}:-" not in text and "TWILIO_AUTH_TOKEN:-" not in text
    services = compose()["services"]
    command = services["redis"]["command"]
    assert command[command.index("default") + 1] == "off" and "opus" in command
    for name in ("bridge", "worker", "worker-archive", "beat", "flower"):
        env = services[name]["environment"]
        assert env["REDIS_URL"].startswith("redis://opus@") and "REDIS_PASSWORD" in env, name
        assert urlsplit(env["ARCHIVE_URL"]).password is None and "ARCHIVE_PASSWORD" in env


def test_redis_persists_and_never_evicts() -> None:
    command = " ".join(compose()["services"]["redis"]["command"])
    assert "--appendonly yes" in command and "--maxmemory-policy noeviction" in command


def test_flower_has_basic_auth_and_is_not_published_beyond_loopback() -> None:
    flower = compose()["services"]["flower"]
    assert "FLOWER_BASIC_AUTH" in flower["environment"]
    assert all(str(p).startswith("127.0.0.1:") for p in flower["ports"])


def test_every_service_has_a_health_check() -> None:
    services = compose()["services"]
    assert set(services) >= {"redis", "postgres", "bridge", "worker", "worker-archive", "beat",
                             "flower"}  # fmt: skip
    assert [name for name, svc in services.items() if "healthcheck" not in svc] == []


def test_worker_beat_and_flower_run_the_app_as_the_readme_says() -> None:
    services = compose()["services"]
    readme = (ROOT / "README.md").read_text()
    for name, verb in [("worker", "worker"), ("beat", "beat"), ("flower", "flower")]:
        assert services[name]["command"][:4] == ["celery", "-A", "workers.app", verb]
        assert f"celery -A workers.app {verb}" in readme


@pytest.mark.skipif(
    not (shutil.which("docker-compose") or shutil.which("docker")), reason="no compose client"
)
def test_compose_config_validates() -> None:
    env = {**os.environ, **REQUIRED}
    for cmd in (["docker", "compose", "config", "-q"], ["docker-compose", "config", "-q"]):
        if shutil.which(cmd[0]) is None:
            continue
        done = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
        if "unknown" in done.stderr and cmd[0] == "docker":
            continue  # the docker client without its compose plugin
        assert done.returncode == 0, done.stderr
        return
    pytest.skip("no compose implementation answered")


def _dockerignored() -> list[str]:
    lines = (ROOT / ".dockerignore").read_text().splitlines()
    return [line.strip().rstrip("/") for line in lines if line.strip() and line[0] != "#"]


def test_the_build_context_leaves_out_the_virtualenv_and_keeps_what_the_image_copies() -> None:
    ignored = _dockerignored()
    assert {".git", ".venv", "var", ".env"} <= set(ignored)
    copied = [
        source
        for line in (ROOT / "Dockerfile").read_text().splitlines()
        if line.startswith("COPY ")
        for source in line.split()[1:-1]
    ]
    assert copied and all((ROOT / source).exists() for source in copied)
    assert [s for s in copied if any(Path(s).match(pattern) for pattern in ignored)] == []


def test_beat_schedule_files_are_not_tracked() -> None:
    ignored = (ROOT / ".gitignore").read_text().splitlines()
    assert "celerybeat-schedule" in ignored and "celerybeat-schedule.*" in ignored


def test_the_sentinel_profile_watches_redis_with_a_replica_and_three_sentinels() -> None:
    services = compose()["services"]
    profiled = {name for name, svc in services.items() if "sentinel" in svc.get("profiles", [])}
    assert profiled == {"redis-replica", "sentinel-1", "sentinel-2", "sentinel-3"}
    replica = services["redis-replica"]["command"]
    assert replica[replica.index("--replicaof") + 1 :][:2] == ["redis", "6379"]
    script = services["sentinel-1"]["command"][-1]
    assert "sentinel monitor opus-master redis 6379 2" in script and "requirepass" in script
    for name in ("bridge", "worker", "worker-archive", "beat"):
        env = services[name]["environment"]
        assert {"REDIS_SENTINELS", "REDIS_SENTINEL_MASTER", "REDIS_SENTINEL_PASSWORD"} <= set(env)
