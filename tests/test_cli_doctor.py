"""`opus-sessions doctor`: not run yet is not failing, and the embedded default is a warning."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import redis

from cli.doctor import Status, sweep_verdict
from tasks.runtime import TaskContext
from tests.conftest import wait_for
from tests.test_cli import archive_dir, run  # noqa: F401 - the fixture, the CLI runner

NOW = datetime(2025, 6, 1, 12, 0, tzinfo=UTC)
INTERVAL_S = 300  # CLEANUP_INTERVAL: a sweep is overdue after 2 x 300 s


def ago(seconds: float) -> datetime:
    return NOW - timedelta(seconds=seconds)


@pytest.mark.parametrize(
    ("last", "sweepers", "up_s", "expected"),
    [
        (ago(30), 1, 5.0, Status.OK),  # a recent sweep
        (ago(30), 0, None, Status.OK),  # it ran recently, even if its workers are gone now
        (None, 1, 60.0, Status.WAIT),  # first minutes of a new stack
        (ago(86_400), 1, 60.0, Status.WAIT),  # a restart: the last sweep predates the workers
        (None, 1, None, Status.WAIT),  # workers did not say their uptime: no reason to fail
        (None, 1, 3600.0, Status.FAIL),  # workers up an hour and never a sweep: beat is missing
        (ago(900), 2, 3600.0, Status.FAIL),  # overdue while workers run
        (ago(900), 1, None, Status.FAIL),  # overdue, uptime unknown
        (None, 0, None, Status.FAIL),  # nothing could run a sweep
    ],
)
def test_the_sweep_verdict_tells_not_run_yet_from_overdue(
    last: datetime | None, sweepers: int, up_s: float | None, expected: Status
) -> None:
    assert sweep_verdict(last, sweepers, up_s, INTERVAL_S, now=NOW).status is expected


def test_a_sweep_not_run_yet_says_when_to_expect_one() -> None:
    finding = sweep_verdict(None, 1, 60.0, INTERVAL_S, now=NOW)
    assert "not run yet since the workers started 1m00s ago" in finding.detail
    assert "every 300 s" in finding.detail and "expect one within 9m00s" in finding.detail


def doctor_json(capsys: pytest.CaptureFixture[str]) -> tuple[int, dict[str, dict[str, Any]]]:
    code, out, _ = run(capsys, "--json", "doctor")
    return code, {c["check"]: c for c in json.loads(out)}


def record_sweep(task_ctx: TaskContext, redis_url: str, prefix: str, at: datetime) -> None:
    """A sweep recorded at `at`: the store records one now, its time is then moved back."""
    task_ctx.store.mark_time("last_sweep_us")
    client = redis.Redis.from_url(redis_url)
    try:
        keys = [k for k in client.scan_iter(match=f"{prefix}*") if client.type(k) == b"hash"]
        recorded = [k for k in keys if client.hexists(k, "last_sweep_us")]
        assert recorded, "the store recorded no sweep"
        for key in recorded:
            client.hset(key, "last_sweep_us", int(at.timestamp() * 1e6))
    finally:
        client.close()


@pytest.mark.usefixtures("inthread_worker", "archive_dir")
def test_doctor_says_not_run_yet_before_the_first_sweep(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CLEANUP_INTERVAL", "86400")  # the worker is surely younger than 2 days
    code, checks = doctor_json(capsys)
    beat = checks["beat"]
    assert (beat["status"], beat["ok"]) == ("wait", True) and "not run yet" in beat["detail"]
    assert code == 0, checks
    code, out, _ = run(capsys, "doctor")
    beat_line = next(line for line in out.splitlines() if " beat " in line)
    assert code == 0 and beat_line.startswith("wait  beat")


@pytest.mark.usefixtures("archive_dir")
def test_doctor_waits_after_a_restart_whose_last_sweep_is_old(
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    inthread_worker: Any,
    task_ctx: TaskContext,
    redis_url: str,
    key_prefix: str,
) -> None:
    monkeypatch.setenv("CLEANUP_INTERVAL", "86400")
    record_sweep(task_ctx, redis_url, key_prefix, inthread_worker.startup_time - timedelta(days=3))
    code, checks = doctor_json(capsys)
    assert checks["beat"]["status"] == "wait" and "the last one was" in checks["beat"]["detail"]
    assert code == 0


@pytest.mark.usefixtures("archive_dir")
def test_doctor_fails_when_the_sweep_is_overdue_while_workers_run(
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    inthread_worker: Any,
    task_ctx: TaskContext,
    redis_url: str,
    key_prefix: str,
) -> None:
    monkeypatch.setenv("CLEANUP_INTERVAL", "1")  # overdue after 2 s
    record_sweep(task_ctx, redis_url, key_prefix, datetime.now(UTC) - timedelta(minutes=1))
    wait_for(lambda: datetime.now(UTC) - inthread_worker.startup_time > timedelta(seconds=3))
    code, checks = doctor_json(capsys)
    beat = checks["beat"]
    assert (beat["status"], beat["ok"]) == ("fail", False) and "is beat running?" in beat["detail"]
    assert "while workers have been up" in beat["detail"] and code == 1


@pytest.mark.usefixtures("archive_dir")
def test_doctor_warns_that_the_embedded_default_is_not_for_production(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("REDIS_URL")
    code, checks = doctor_json(capsys)
    redis_check = checks["redis"]
    assert (redis_check["status"], redis_check["ok"]) == ("warn", True)
    assert "not for production" in redis_check["detail"] and code == 0
    assert [c["status"] for name, c in checks.items() if name != "redis"] == ["ok"] * 4
    code, out, _ = run(capsys, "doctor")
    assert code == 0 and out.splitlines()[0].startswith("warn  redis     REDIS_URL is not set")
