"""The operator commands, run in-process against the real Redis, worker and archive sinks."""

from __future__ import annotations

import asyncio
import csv
import io
import json
import re
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import redis

from cli.main import EXIT_CONFIG, EXIT_FAILED, EXIT_OK, EXIT_UNAVAILABLE, main
from sessions.archive import ArchiveRecord, ArchiveSink, FileSystemSink, PostgresSink
from sessions.codec import Snapshot
from sessions.redis_async import RedisSessionStorage
from sessions.service import SessionManagerService
from sessions.state import SessionState, SessionStatus
from sessions.usage import ModelUsage
from tasks.maintenance import refresh_statistics, sweep
from tasks.runtime import TaskContext
from tests.conftest import wait_for
from tests.helpers import make_state
from tests.services import (
    NO_POSTGRES_HELP,
    archive_test_url,
    drop_table,
    free_port,
    postgres_answers,
)

Result = tuple[int, str, str]
CLEARED = (
    "ARCHIVE_URL",
    "ARCHIVE_TABLE",
    "CELERY_BROKER_URL",
    "SESSION_STORAGE_TYPE",
    "REDIS_DB",
    "REDIS_PASSWORD",
    "NO_COLOR",
)


@pytest.fixture
def archive_dir(
    monkeypatch: pytest.MonkeyPatch,
    redis_url: str,
    key_prefix: str,
    broker_prefix: str,
    tmp_path: Path,
) -> Path:
    """The environment of a CLI run on this test's keys; the filesystem archive dir."""
    for name in CLEARED:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("REDIS_URL", redis_url)
    monkeypatch.setenv("SESSION_PREFIX", key_prefix)
    monkeypatch.setenv("CELERY_KEY_PREFIX", broker_prefix)
    monkeypatch.setenv("ARCHIVE_DIR", str(tmp_path / "archive"))
    return tmp_path / "archive"


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> Result:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def create_sessions(redis_url: str, prefix: str, *states: SessionState) -> None:
    """Create each session through the service, then save its full state."""

    async def go() -> None:
        storage = RedisSessionStorage(redis_url, session_prefix=prefix)
        service = SessionManagerService(storage)
        try:
            for state in states:
                created = await service.create_session(
                    state.conversation_id, caller=state.caller, status="active"
                )
                state.epoch = created.epoch
                state.seq = created.seq + 1
                await storage.save(Snapshot.of(state))
                if state.status is SessionStatus.ENDED:
                    await service.end_session(state.conversation_id, state.end_reason or "done")
        finally:
            await storage.close()

    asyncio.run(go())


def call(conversation_id: str, caller: str = "+15550100", turns: int = 0) -> SessionState:
    state = make_state(conversation_id, caller=caller)
    for turn in range(turns):
        role = "user" if turn % 2 == 0 else "assistant"
        state.add_conversation_item({"role": role, "content": f"{role} says {turn}"})
    return state


# -- sessions ----------------------------------------------------------------------------


def test_list_shows_the_live_sessions(
    capsys: pytest.CaptureFixture[str], archive_dir: Path, redis_url: str, key_prefix: str
) -> None:
    ended = call("gone")
    ended.end("caller hung up")
    create_sessions(redis_url, key_prefix, call("a1", "+15551111", 3), call("a2"), ended)
    code, out, _ = run(capsys, "sessions", "list")
    assert code == EXIT_OK
    lines = out.splitlines()
    assert lines[0].split() == ["ID", "STATUS", "CALLER", "TURNS", "RESUMES", "IDLE"]
    assert lines[1].split() == ["a2", "active", "+15550100", "0", "0", "0s"]
    assert lines[2].split()[:5] == ["a1", "active", "+15551111", "3", "0"]
    assert "gone" not in out and "2 of 2 live sessions" in out
    code, out, _ = run(capsys, "sessions", "list", "--all")
    assert "gone" in out and "3 of 3 stored sessions" in out
    code, out, _ = run(capsys, "--json", "sessions", "list", "--limit", "1")
    listing = json.loads(out)
    assert (listing["total"], listing["shown"]) == (2, 1)
    assert listing["sessions"][0]["conversation_id"] == "a2"


def test_show_prints_the_fields_transcript_and_function_calls(
    capsys: pytest.CaptureFixture[str], archive_dir: Path, redis_url: str, key_prefix: str
) -> None:
    state = call("c1", turns=2)
    state.add_function_call({"name": "lookup_account", "arguments": {"id": "42"}})
    create_sessions(redis_url, key_prefix, state)
    code, out, _ = run(capsys, "sessions", "show", "c1")
    assert code == EXIT_OK
    assert "transcript (2 items)" in out and "function calls (1)" in out
    assert "user says 0" in out and "assistant says 1" in out
    assert "lookup_account" in out and '{"id": "42"}' in out
    code, out, _ = run(capsys, "sessions", "show", "c1", "--json")
    shown = json.loads(out)
    assert [t["content"] for t in shown["conversation_history"]] == [
        "user says 0",
        "assistant says 1",
    ]
    assert "audio_buffer" not in shown


def test_show_of_an_unknown_id_exits_1(
    capsys: pytest.CaptureFixture[str], archive_dir: Path
) -> None:
    code, out, err = run(capsys, "sessions", "show", "nobody")
    assert code == EXIT_FAILED and out == ""
    assert "no session 'nobody'" in err


@pytest.mark.usefixtures("inthread_worker")
def test_end_has_the_worker_end_and_archive_the_session(
    capsys: pytest.CaptureFixture[str],
    archive_dir: Path,
    redis_url: str,
    key_prefix: str,
    task_ctx: TaskContext,
) -> None:
    create_sessions(redis_url, key_prefix, call("c1", turns=2))
    code, out, _ = run(capsys, "sessions", "end", "c1", "--reason", "operator ended it")
    assert code == EXIT_OK and "opus.archive.end_session" in out
    wait_for(lambda: (r := task_ctx.store.load_record("c1")) is not None and r.archived)
    stored = task_ctx.store.load_record("c1")
    assert stored is not None and stored.state.status is SessionStatus.ENDED
    assert stored.state.end_reason == "operator ended it"
    record = FileSystemSink(archive_dir).read("c1")
    assert record is not None and len(record.transcript) == 2
    code, out, _ = run(capsys, "sessions", "end", "c1")
    assert code == EXIT_OK and "already ended" in out


# -- stats -------------------------------------------------------------------------------


def test_stats_show_the_statistics_of_a_known_set(
    capsys: pytest.CaptureFixture[str], archive_dir: Path, task_ctx: TaskContext
) -> None:
    store = task_ctx.store
    for i, status in enumerate(["active", "active", "paused", "error"]):
        store.save(Snapshot.of(make_state(f"live{i}", status=SessionStatus(status))))
    now = datetime.now(UTC)
    for i, seconds in enumerate([30.0, 60.0, 90.0]):
        state = make_state(f"done{i}", created_at=now - timedelta(seconds=seconds))
        state.end("caller hung up", at=now)
        store.save(Snapshot.of(state))
        usage = ModelUsage(responses=2, input_tokens=100 * (i + 1), output_audio_tokens=7)
        store.mark_archived(f"done{i}", seconds, usage.event_counters())
        store.mark_archived(f"done{i}", seconds, usage.event_counters())  # a repeat adds nothing
    refresh_statistics(task_ctx)
    code, out, _ = run(capsys, "--json", "stats")
    assert code == EXIT_OK
    stats = json.loads(out)
    assert stats["active_sessions_count"] == 4
    assert stats["status_counts"] == {"active": 2, "paused": 1, "error": 1, "ended": 3}
    document = stats["statistics"]
    assert (document["live_sessions"], document["archived"], document["archive_backlog"]) == (
        4,
        3,
        0,
    )
    assert document["call_duration_s"]["p50"] == 60.0 and document["call_duration_s"]["max"] == 90.0
    usage = document["model_usage"]
    assert (usage["responses"], usage["input_tokens"], usage["output_audio_tokens"]) == (6, 600, 21)
    code, out, _ = run(capsys, "stats")
    rows = dict(re.split(r"\s{2,}", line, maxsplit=1) for line in out.splitlines())
    assert (rows["live sessions"], rows["sessions active"], rows["sessions ended"]) == (
        "4",
        "2",
        "3",
    )
    assert (rows["archived"], rows["call duration p50"]) == ("3", "60 s")
    assert rows["model usage input tokens"] == "600"


def test_stats_print_the_archive_backlog_once(
    capsys: pytest.CaptureFixture[str], archive_dir: Path, task_ctx: TaskContext
) -> None:
    refresh_statistics(task_ctx)  # the document has a backlog too: the live count is shown
    code, out, _ = run(capsys, "stats")
    backlog = [line for line in out.splitlines() if line.startswith("archive backlog")]
    assert code == EXIT_OK and [line.split() for line in backlog] == [["archive", "backlog", "0"]]


# -- archive export ----------------------------------------------------------------------

ENDED_AT = [
    datetime(2024, 1, 10, 12, 0, tzinfo=UTC),
    datetime(2024, 2, 15, 8, 30, tzinfo=UTC),
    datetime(2024, 3, 20, 23, 59, tzinfo=UTC),
]


def record(conversation_id: str, ended_at: datetime) -> ArchiveRecord:
    state = call(conversation_id, turns=3)
    state.created_at = ended_at - timedelta(seconds=75)
    state.add_function_call({"name": "lookup_account", "arguments": {"id": 1}})
    state.end("caller hung up", at=ended_at)
    return ArchiveRecord.of(state)


@pytest.fixture(params=["filesystem", "postgres"])
def sink(
    request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch, archive_dir: Path
) -> Iterator[ArchiveSink]:
    """The real sink the CLI is configured with, holding one record per ENDED_AT."""
    target: ArchiveSink
    if request.param == "filesystem":
        target = FileSystemSink(archive_dir)
    else:
        url, table = archive_test_url(), f"cli_test_{uuid.uuid4().hex[:10]}"
        if not postgres_answers(url):
            pytest.fail(NO_POSTGRES_HELP.format(url=url))
        monkeypatch.setenv("ARCHIVE_URL", url)
        monkeypatch.setenv("ARCHIVE_TABLE", table)
        target = PostgresSink(url, table)
        request.addfinalizer(lambda: drop_table(url, table))
    for i, ended_at in enumerate(ENDED_AT):
        target.write(record(f"r{i}", ended_at))
    yield target
    target.close()


def test_export_jsonl_since_a_date_to_a_file(
    capsys: pytest.CaptureFixture[str], sink: ArchiveSink, tmp_path: Path
) -> None:
    output = tmp_path / "export.jsonl"
    code, out, err = run(
        capsys, "archive", "export", "--since", "2024-02-01", "--output", str(output), "--progress"
    )
    assert code == EXIT_OK and out == ""
    lines = [json.loads(line) for line in output.read_text().splitlines()]
    assert [r["conversation_id"] for r in lines] == ["r1", "r2"]
    assert lines[0]["end_reason"] == "caller hung up" and len(lines[0]["transcript"]) == 3
    assert "2/2" in err and f"2 records written to {output}" in err


def test_export_csv_between_datetimes_to_stdout(
    capsys: pytest.CaptureFixture[str], sink: ArchiveSink
) -> None:
    code, out, err = run(
        capsys,
        "archive",
        "export",
        "--format",
        "csv",
        "--since",
        "2024-01-10T12:00:00Z",
        "--until",
        "2024-03-20T23:59:00+00:00",
    )
    assert code == EXIT_OK
    rows = list(csv.DictReader(io.StringIO(out)))
    assert list(rows[0]) == [
        "conversation_id",
        "bridge_type",
        "caller",
        "status",
        "started_at",
        "ended_at",
        "duration_s",
        "resumed_count",
        "end_reason",
        "turns",
        "function_calls",
    ]
    assert [r["conversation_id"] for r in rows] == ["r0", "r1"]
    assert (rows[1]["ended_at"], rows[1]["duration_s"]) == ("2024-02-15T08:30:00+00:00", "75.0")
    assert (rows[1]["turns"], rows[1]["function_calls"], rows[1]["status"]) == ("3", "1", "ended")
    assert "2 records written to stdout" in err


@pytest.mark.parametrize("since", ["yesterday", "2024-13-01", ""])
def test_a_bad_since_is_a_usage_error(
    capsys: pytest.CaptureFixture[str], archive_dir: Path, since: str
) -> None:
    code, out, err = run(capsys, "archive", "export", "--since", since)
    assert code == EXIT_CONFIG and out == ""
    assert "--since" in err and "YYYY-MM-DD" in err


# -- doctor ------------------------------------------------------------------------------


@pytest.mark.usefixtures("inthread_worker")
def test_doctor_is_all_green_on_the_live_stack(
    capsys: pytest.CaptureFixture[str], archive_dir: Path, task_ctx: TaskContext
) -> None:
    sweep(task_ctx, task_ctx.settings.session_ttl_s)
    code, out, _ = run(capsys, "--json", "doctor")
    checks = json.loads(out)
    assert [c["check"] for c in checks] == ["redis", "broker", "workers", "beat", "archive"]
    assert all(c["ok"] for c in checks), checks
    assert code == EXIT_OK
    code, out, _ = run(capsys, "doctor")
    assert code == EXIT_OK and all(line.startswith("ok") for line in out.splitlines())
    assert "archive, maintenance, persistence" in out


def test_doctor_is_red_when_redis_is_down(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, archive_dir: Path
) -> None:
    monkeypatch.setenv("REDIS_URL", f"redis://127.0.0.1:{free_port()}")
    started = time.monotonic()
    code, out, _ = run(capsys, "doctor")
    assert code == EXIT_FAILED and time.monotonic() - started < 10
    redis_line = out.splitlines()[0]
    assert redis_line.startswith("FAIL") and "Redis" in redis_line
    assert "docker compose up -d redis" in redis_line
    code, out, _ = run(capsys, "--json", "doctor")
    assert {c["check"]: c["ok"] for c in json.loads(out)} == {
        "redis": False,
        "broker": False,
        "workers": False,
        "beat": False,
        "archive": True,
    }


# -- without a stack ---------------------------------------------------------------------


def test_commands_say_how_to_get_redis_when_it_is_down(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, archive_dir: Path
) -> None:
    monkeypatch.setenv("REDIS_URL", f"redis://127.0.0.1:{free_port()}")
    code, _, err = run(capsys, "sessions", "list")
    assert code == EXIT_UNAVAILABLE and "docker compose up -d redis" in err
    assert "unset REDIS_URL" in err


def test_the_embedded_default_says_where_its_sessions_are(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, archive_dir: Path
) -> None:
    monkeypatch.delenv("REDIS_URL")
    code, out, err = run(capsys, "sessions", "list")
    assert code == EXIT_OK and "set REDIS_URL to inspect a running stack" in err
    code, _, err = run(capsys, "sessions", "show", "c1")
    assert code == EXIT_CONFIG and "embedded default" in err
    code, out, _ = run(capsys, "doctor")
    assert code == EXIT_OK and "embedded default" in out.splitlines()[0]


def test_list_all_reads_the_indexes_not_the_keyspace(
    capsys: pytest.CaptureFixture[str], archive_dir: Path, redis_url: str, key_prefix: str
) -> None:
    create_sessions(redis_url, key_prefix, call("indexed"))
    stray = redis.Redis.from_url(redis_url)
    stray.hset(key_prefix + "stray", mapping={"conversation_id": '"stray"'})  # in no index
    stray.close()
    code, out, _ = run(capsys, "sessions", "list", "--all")
    assert code == EXIT_OK and "indexed" in out and "stray" not in out
