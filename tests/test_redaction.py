"""No caller data in what Flower, task events and worker logs show of a task.

A call runs through a bridge on the real Redis broker while a real worker (events on, as
configured) applies its saves, ends and archives it; every task event on the broker is
captured and every log line kept. Neither may hold the caller's number or a word of the
transcript; the archive, where caller data belongs, holds both.
"""

from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import Any

import pytest
from celery import Celery

from bridges.call.runtime import BridgeRuntime
from bridges.hosting import hosted_bridge
from bridges.sim.server import RealtimeSimulator
from bridges.sim.telephony import AudioCodesClient
from sessions.settings import Settings
from tasks import names
from tasks.redaction import RedactedTask, describe_args
from tests.conftest import wait_until

NUMBER = "+15557770123"
SPOKEN = "4646"


class EventTap:
    """Every task event on the broker, captured from a thread while the call runs."""

    def __init__(self, app: Celery) -> None:
        self.app = app
        self.events: list[dict[str, Any]] = []
        self.ready = threading.Event()
        self._receiver: Any = None
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> EventTap:
        self._thread.start()
        assert self.ready.wait(10)
        return self

    def __exit__(self, *exc_info: object) -> None:
        if self._receiver is not None:
            self._receiver.should_stop = True
        self._thread.join(10)

    def _run(self) -> None:
        with self.app.connection_for_read() as connection:
            self._receiver = self.app.events.Receiver(connection, handlers={"*": self._keep})
            self.ready.set()
            self._receiver.capture(limit=None, timeout=None, wakeup=False)

    def _keep(self, event: dict[str, Any]) -> None:
        if str(event.get("type", "")).startswith("task-"):
            self.events.append(event)


def test_shown_arguments_are_ids_sizes_and_counts() -> None:
    batch = json.dumps([{"conversation_id": "c1", "fields": {"caller": NUMBER}}])
    shown = [
        describe_args(names.SAVE_SESSIONS, [batch]),
        describe_args(names.END_SESSION, ["c1", "caller hung up", {"fields": {"x": NUMBER}}]),
        describe_args(names.ARCHIVE_SESSIONS, [[f"c{i}" for i in range(9)]]),
        describe_args(names.ARCHIVE_SESSION, ["c1"]),
    ]
    assert shown[0] == f"(batch of 1 snapshots, {len(batch)} bytes)"
    assert shown[1] == "('c1', reason of 14 characters, with a final snapshot)"
    assert shown[2].startswith("(9 ids: 'c0'") and shown[2].endswith("+4 more)")
    assert all(NUMBER not in text for text in shown)


def test_every_task_of_the_worker_redacts_its_retries_too(worker_app: Celery) -> None:
    worker_app.loader.import_default_modules()
    ours = [task for name, task in worker_app.tasks.items() if name.startswith("opus.")]
    assert len(ours) == 6 and all(isinstance(task, RedactedTask) for task in ours)


async def test_task_events_and_worker_logs_hold_no_caller_data(
    redis_settings: Settings, worker_app: Celery, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level("INFO")
    archive_dir = Path(redis_settings.archive_dir)
    async with RealtimeSimulator() as sim:
        runtime = BridgeRuntime.build(redis_settings, realtime_url=sim.url)
        with EventTap(worker_app) as tap:
            async with hosted_bridge(runtime) as url:
                caller = AudioCodesClient(url, "private-1")
                await caller.connect()
                await caller.initiate(caller=NUMBER)
                await caller.expect("playStream.stop")
                await caller.say(SPOKEN)
                await caller.expect(
                    lambda m: m.get("type") == "playStream.stop" and m["streamId"] == "2"
                )
                await caller.hangup()
                await caller.closed()
                await wait_until(lambda: _async(any(archive_dir.rglob("private-1.json"))))
                await wait_until(lambda: _async(_seen(tap, names.ARCHIVE_SESSION)))
    kinds = {e["type"] for e in tap.events}
    assert {"task-sent", "task-received", "task-succeeded"} <= kinds
    sent = [e for e in tap.events if e["type"] in ("task-sent", "task-received")]
    assert {e.get("name") for e in sent} >= {names.SAVE_SESSIONS, names.END_SESSION}
    shown = json.dumps(tap.events) + "\n".join(r.getMessage() for r in caplog.records)
    assert NUMBER not in shown and f"you said {SPOKEN}" not in shown and SPOKEN not in shown
    record = next(archive_dir.rglob("private-1.json")).read_text()
    assert NUMBER in record and f"you said {SPOKEN}" in record  # where caller data belongs


def _seen(tap: EventTap, name: str) -> bool:
    return any(e.get("name") == name and e["type"] == "task-received" for e in tap.events)


async def _async(value: bool) -> bool:
    return value
