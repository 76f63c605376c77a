"""The commands the README and the CLI's hints give for workers and beat are complete and
match docker-compose.yml."""

from __future__ import annotations

import re
from pathlib import Path

import yaml

from cli import doctor

ROOT = Path(__file__).resolve().parent.parent
CELERY_START = re.compile(r"celery -A workers\.app (worker|beat)\b[^`\n]*")


def readme_section(title: str) -> str:
    text = (ROOT / "README.md").read_text()
    return text.split(f"\n## {title}\n", 1)[1].split("\n## ", 1)[0]


def test_the_readme_starts_workers_and_beat_with_a_log_level() -> None:
    commands = [
        m.group(0) for m in CELERY_START.finditer(readme_section("Tasks, workers, beat and Flower"))
    ]
    assert len(commands) >= 4
    assert [c for c in commands if "--loglevel INFO" not in c] == []


def test_compose_starts_workers_and_beat_with_the_same_log_level() -> None:
    services = yaml.safe_load((ROOT / "docker-compose.yml").read_text())["services"]
    for name in ("worker", "worker-archive", "beat"):
        command = services[name]["command"]
        assert command[command.index("--loglevel") + 1] == "INFO", name


def test_the_doctor_hints_start_workers_and_beat_with_a_log_level() -> None:
    hinted = [m.group(0) for m in CELERY_START.finditer(doctor.START_WORKERS + doctor.START_BEAT)]
    assert len(hinted) == 2 and all(c.endswith("--loglevel INFO") for c in hinted)


def test_the_command_line_section_documents_version_and_the_doctor_states() -> None:
    section = readme_section("Command line")
    assert "`--version`" in section
    assert all(f"`{state}`" in section for state in ("ok", "wait", "warn", "FAIL"))
