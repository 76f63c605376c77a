"""The embedded default's executor: a retryable failure is tried again with backoff, then given up.

The tasks are the real ones against the in-process store; the failures are real: an archive
sink whose directory is a file until the test removes it.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from tenacity import RetryCallState

from sessions.archive import FileSystemSink
from sessions.codec import Snapshot
from sessions.memory_store import MemoryStore
from sessions.settings import Settings
from tasks import names
from tasks.local import LocalExecutor
from tasks.runtime import TaskContext
from tests.conftest import wait_for
from tests.helpers import make_state


@pytest.fixture
def blocked_archive(tmp_path: Path) -> Path:
    """An ARCHIVE_DIR that is a file: every archive write fails (ArchiveUnavailable)."""
    root = tmp_path / "archive"
    root.write_text("not a directory")
    return root


@contextmanager
def started(executor: LocalExecutor, archive_dir: Path) -> Iterator[TaskContext]:
    settings = Settings(archive_dir=str(archive_dir))
    context = TaskContext(settings, MemoryStore(), FileSystemSink(archive_dir), executor)
    executor.start(context, schedule=False)
    try:
        yield context
    finally:
        executor.close(timeout_s=1)


def store_ended(context: TaskContext, conversation_id: str) -> None:
    state = make_state(conversation_id)
    state.end("caller hung up")
    assert context.store.save(Snapshot.of(state))


def archive_failures(context: TaskContext) -> int:
    return context.store.events().get("archive_failures", 0)


def retry_warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if "retrying in" in r.getMessage()]


def test_a_retryable_failure_is_tried_again_then_given_up(
    blocked_archive: Path, caplog: pytest.LogCaptureFixture
) -> None:
    executor = LocalExecutor(retry_attempts=3, retry_delay_s=0.01)
    with started(executor, blocked_archive) as context:
        store_ended(context, "c1")
        with caplog.at_level(logging.WARNING, logger="tasks.local"):
            executor.send(names.ARCHIVE_SESSION, "c1")
            assert executor.drain(5)
        assert archive_failures(context) == 3
        assert (executor.completed, executor.failed) == (0, 1)
        assert len(retry_warnings(caplog)) == 2
        assert f"local task {names.ARCHIVE_SESSION} gave up after 3 attempts" in caplog.text
        assert context.store.archive_backlog() == 1  # kept for the sweep's overdue pass


def test_a_retryable_failure_that_clears_is_retried_until_the_task_succeeds(
    blocked_archive: Path,
) -> None:
    executor = LocalExecutor(retry_delay_s=0.2)
    with started(executor, blocked_archive) as context:
        store_ended(context, "c1")
        executor.send(names.ARCHIVE_SESSION, "c1")
        wait_for(lambda: archive_failures(context) >= 1, timeout_s=5)
        executor.send(names.COMPUTE_STATISTICS)  # runs while the archive waits for its retry
        wait_for(lambda: executor.completed == 1, timeout_s=5)
        assert executor.failed == 0 and context.store.archive_backlog() == 1
        blocked_archive.unlink()
        assert executor.drain(15)
        assert (executor.completed, executor.failed) == (2, 0)
        assert context.store.archive_backlog() == 0
        assert [p.name for p in blocked_archive.rglob("*.json")] == ["c1.json"]


def test_a_terminal_failure_is_not_retried(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    executor = LocalExecutor(retry_delay_s=0.01)
    with started(executor, tmp_path):
        with caplog.at_level(logging.WARNING, logger="tasks.local"):
            executor.send(names.END_SESSION, "not a valid id!", "caller hung up")
            assert executor.drain(5)
        assert (executor.completed, executor.failed) == (0, 1)
        assert retry_warnings(caplog) == []
        assert "InvalidConversationId" in caplog.text  # logged with its traceback


def test_by_default_a_task_gets_six_tries_half_a_second_apart_doubling_up_to_eight() -> None:
    retrying = LocalExecutor().retrying
    tries = RetryCallState(retrying, None, (), {})
    delays, stops = [], []
    for attempt in range(1, 7):
        tries.attempt_number = attempt
        delays.append(retrying.wait(tries))
        stops.append(retrying.stop(tries))
    assert delays[:5] == [0.5, 1, 2, 4, 8]
    assert stops == [False] * 5 + [True]
