"""Celery plumbing for tests: per-run broker isolation, subprocess workers, beat."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from celery import Celery

import celeryconfig
from sessions.settings import Settings

ROOT = Path(__file__).resolve().parent.parent


def broker_app(settings: Settings) -> Celery:
    """A client-only app on the given broker settings (sends and pings by task name)."""
    app = Celery(f"test-client-{uuid.uuid4().hex[:6]}", set_as_current=False)
    app.conf.update(celeryconfig.build(settings))
    return app


def worker_env(settings_env: dict[str, str]) -> dict[str, str]:
    """The environment of a subprocess worker: ours plus the test's settings."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST")}
    env.update(settings_env)
    env["PYTHONPATH"] = str(ROOT)
    return env


@contextmanager
def subprocess_worker(
    app: Celery, env: dict[str, str], log_path: Path, queues: str = "persistence"
) -> Iterator[subprocess.Popen[bytes]]:
    """`celery -A workers.app worker` in a child process, ready when it answers a ping."""
    name = f"test-{uuid.uuid4().hex[:8]}@localhost"
    cmd = [sys.executable, "-m", "celery", "-A", "workers.app", "worker", "-Q", queues,
           "--pool", "solo", "-n", name, "--loglevel", "INFO",
           "--without-gossip", "--without-mingle"]  # fmt: skip
    with open(log_path, "ab") as log:
        proc = subprocess.Popen(cmd, cwd=ROOT, env=worker_env(env), stdout=log, stderr=log)
    try:
        wait_for_ping(app, name, proc, log_path)
        yield proc
    finally:
        stop(proc)


def wait_for_ping(
    app: Celery, name: str, proc: subprocess.Popen[bytes], log_path: Path, timeout_s: float = 60
) -> None:
    """Block until the named worker answers a control ping."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            tail = log_path.read_text()[-3000:]
            raise RuntimeError(f"worker exited ({proc.returncode}):\n{tail}")
        if app.control.ping(destination=[name], timeout=0.5):
            return
    raise RuntimeError(f"worker {name} did not answer a ping:\n{log_path.read_text()[-3000:]}")


def stop(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM (warm shutdown), then SIGKILL if it lingers."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


@contextmanager
def subprocess_beat(env: dict[str, str], workdir: Path) -> Iterator[Path]:
    """`celery -A workers.app beat` in a child process; yields its log file."""
    log_path = workdir / "beat.log"
    cmd = [sys.executable, "-m", "celery", "-A", "workers.app", "beat", "--loglevel", "DEBUG",
           "--schedule", str(workdir / "beat-schedule")]  # fmt: skip
    with open(log_path, "ab") as log:
        proc = subprocess.Popen(cmd, cwd=ROOT, env=worker_env(env), stdout=log, stderr=log)
    try:
        yield log_path
    finally:
        stop(proc)
