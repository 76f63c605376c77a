"""Archive sinks: the filesystem and the real PostgreSQL; archiving twice gives one record."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from celery import Celery

from sessions.archive import ArchiveRecord, ArchiveUnavailable, FileSystemSink, PostgresSink
from sessions.codec import Snapshot
from sessions.errors import CorruptSession
from sessions.state import SessionState
from sessions.storage import ArchiveMark
from sessions.usage import ModelInfo, ModelUsage
from tasks import names
from tasks.archive import archive_one
from tasks.runtime import TaskContext
from tests.conftest import wait_for
from tests.helpers import make_state
from tests.services import (
    NO_POSTGRES_HELP,
    archive_test_url,
    drop_table,
    postgres_answers,
)


@pytest.fixture
def pg_sink() -> Iterator[PostgresSink]:
    url = archive_test_url()
    if not postgres_answers(url):
        pytest.fail(NO_POSTGRES_HELP.format(url=url))
    table = f"archive_test_{uuid.uuid4().hex[:10]}"
    sink = PostgresSink(url, table)
    yield sink
    sink.close()
    drop_table(url, table)


def ended_state(conversation_id: str, seconds: float = 95.5) -> SessionState:
    now = datetime.now(UTC)
    state = make_state(conversation_id, created_at=now - timedelta(seconds=seconds))
    state.add_conversation_item({"role": "user", "content": "hello"})
    state.add_function_call({"name": "lookup_account", "arguments": {"id": 1}})
    state.resumed_count = 2
    state.end("caller hung up", at=now)
    return state


def store_ended(ctx: TaskContext, conversation_id: str) -> SessionState:
    state = ended_state(conversation_id)
    assert ctx.store.save(Snapshot.of(state))
    return state


def test_a_record_holds_the_whole_call() -> None:
    record = ArchiveRecord.of(ended_state("c1", seconds=95.5))
    assert record.duration_s == pytest.approx(95.5)
    assert (record.resumed_count, record.end_reason) == (2, "caller hung up")
    assert record.transcript[0]["content"] == "hello"
    assert record.function_calls[0]["name"] == "lookup_account"
    assert "audio_buffer" not in record.state


def test_a_record_stores_nothing_twice_and_gives_the_whole_state_back() -> None:
    state = ended_state("c1")
    state.openai_session_id, state.metadata["team"] = "sess_1", "billing"
    record = ArchiveRecord.of(state)
    assert set(record.state) & {"conversation_history", "function_calls", "caller"} == set()
    text = record.model_dump_json()
    assert text.count('"hello"') == 1 and text.count('"lookup_account"') == 1
    assert record.state["openai_session_id"] == "sess_1"
    assert record.session_state() == state.model_copy(update={"audio_buffer": []})


def test_archiving_twice_to_the_filesystem_gives_one_record(
    task_ctx: TaskContext, tmp_path: Path
) -> None:
    state = store_ended(task_ctx, "c1")
    assert archive_one(task_ctx, "c1") == "archived"
    assert archive_one(task_ctx, "c1") == ArchiveMark.ALREADY.value
    files = list((tmp_path / "archive").rglob("*.json"))
    assert [f.name for f in files] == ["c1.json"]
    assert files[0].parent.relative_to(tmp_path / "archive").as_posix() == (
        state.ended_at.strftime("%Y/%m/%d") if state.ended_at else ""
    )
    assert json.loads(files[0].read_text())["conversation_id"] == "c1"
    assert task_ctx.store.events()["archived"] == 1
    assert not list((tmp_path / "archive").rglob(".tmp-*"))


def test_an_archived_call_adds_its_model_usage_to_the_statistics_once(
    task_ctx: TaskContext,
) -> None:
    state = ended_state("c1")
    state.usage = ModelUsage(responses=3, input_tokens=420, cached_tokens=100, output_tokens=90)
    state.realtime = ModelInfo(provider="openai", model="gpt-realtime", voice="marin",
                               input_format="audio/pcmu", output_format="audio/pcmu")  # fmt: skip
    task_ctx.store.save(Snapshot.of(state))
    assert archive_one(task_ctx, "c1") == "archived"
    assert archive_one(task_ctx, "c1") == ArchiveMark.ALREADY.value
    events = task_ctx.store.events()
    assert ModelUsage.from_event_counters(events) == state.usage
    record = task_ctx.sink.read("c1")
    assert record is not None and record.usage == state.usage and record.realtime == state.realtime


def test_archiving_twice_to_postgres_gives_one_record(
    task_ctx: TaskContext, pg_sink: PostgresSink
) -> None:
    task_ctx.sink = pg_sink
    store_ended(task_ctx, "c1")
    assert archive_one(task_ctx, "c1") == "archived"
    assert archive_one(task_ctx, "c1") == ArchiveMark.ALREADY.value
    pg_sink.write(ArchiveRecord.of(ended_state("c1")))  # a repeated write is an upsert
    rows = pg_sink._execute("SELECT count(*) FROM {table}", ())
    assert rows == [(1,)]
    record = pg_sink.read("c1")
    assert record is not None and record.end_reason == "caller hung up"


def test_only_an_archived_session_lets_its_hot_state_go(task_ctx: TaskContext) -> None:
    store_ended(task_ctx, "c1")
    store = task_ctx.store
    ttl_before = store.client.pttl(store.keys.session("c1"))  # type: ignore[attr-defined]
    assert store.archive_backlog() == 1
    archive_one(task_ctx, "c1")
    ttl_after = store.client.pttl(store.keys.session("c1"))  # type: ignore[attr-defined]
    assert store.archive_backlog() == 0
    assert ttl_after < ttl_before  # retention shortened only once the record is written


def test_a_failed_archive_is_counted_and_kept_for_retry(
    task_ctx: TaskContext, tmp_path: Path
) -> None:
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("x")
    task_ctx.sink = FileSystemSink(blocker)
    store_ended(task_ctx, "c1")
    with pytest.raises(ArchiveUnavailable):
        archive_one(task_ctx, "c1")
    assert task_ctx.store.events()["archive_failures"] == 1
    assert task_ctx.store.archive_overdue(older_than_s=0, limit=10) == ["c1"]
    task_ctx.sink = FileSystemSink(tmp_path / "archive")
    assert archive_one(task_ctx, "c1") == "archived"
    assert task_ctx.store.archive_backlog() == 0


def test_a_session_that_has_not_ended_is_not_archived(task_ctx: TaskContext) -> None:
    task_ctx.store.save(Snapshot.of(make_state("live")))
    assert archive_one(task_ctx, "live") == ArchiveMark.NOT_ENDED.value
    assert archive_one(task_ctx, "nobody") == "missing"


def test_a_corrupt_session_is_counted_not_crashed_on(task_ctx: TaskContext) -> None:
    store_ended(task_ctx, "c1")
    client = task_ctx.store.client  # type: ignore[attr-defined]
    client.hset(task_ctx.store.keys.session("c1"), "metadata", "{broken")  # type: ignore[attr-defined]
    with pytest.raises(CorruptSession):
        task_ctx.store.load_record("c1")
    assert archive_one(task_ctx, "c1") == "corrupt"
    assert task_ctx.store.events()["archive_corrupt"] == 1


@pytest.mark.usefixtures("inthread_worker")
def test_the_archive_task_writes_through_the_worker(
    worker_app: Celery, task_ctx: TaskContext, pg_sink: PostgresSink
) -> None:
    task_ctx.sink = pg_sink
    store_ended(task_ctx, "c1")
    worker_app.send_task(names.ARCHIVE_SESSION, args=["c1"])
    worker_app.send_task(names.ARCHIVE_SESSION, args=["c1"])
    wait_for(lambda: pg_sink.write_count("c1") >= 1)
    wait_for(lambda: task_ctx.store.archive_backlog() == 0)
    assert pg_sink.write_count("c1") == 1
