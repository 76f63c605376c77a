"""`opus-sessions doctor`: one line per dependency of a running stack, each with a short timeout.

Each check ends in one of four states: `ok`; `wait` (nothing wrong yet, for instance no
expiry sweep since the workers started); `warn` (works, but not as a production stack
should, such as the embedded default); `FAIL`. Only a failure makes the exit code 1.
"""

from __future__ import annotations

import argparse
import threading
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from enum import StrEnum
from typing import TYPE_CHECKING, Any

from rich.table import Table
from rich.text import Text

from cli.output import (
    EXIT_FAILED,
    EXIT_OK,
    NO_ARCHIVE_HINT,
    NO_BROKER_HINT,
    NO_REDIS_HINT,
    human_duration,
    json_option,
    make_console,
    one_line,
    print_json,
    show,
    since_text,
)
from sessions.archive import ArchiveUnavailable
from sessions.clock import from_us
from sessions.factory import build_sink, build_sync_store
from sessions.redis_ops import redact_url
from sessions.redis_sync import SyncRedisStore
from sessions.redis_topology import RedisTopology
from sessions.settings import Settings

if TYPE_CHECKING:
    from cli.output import Subparsers

CHECK_TIMEOUT_S = 2.0
IO_TIMEOUT_S = 1.5
INSPECT_TIMEOUT_S = 1.0
SWEEP_QUEUE = "maintenance"
START_WORKERS = (
    "start workers with `docker compose up -d worker worker-archive`, or "
    "`celery -A workers.app worker -Q persistence,archive,maintenance --loglevel INFO`"
)
START_BEAT = (
    "start beat with `docker compose up -d beat` or `celery -A workers.app beat --loglevel INFO`"
)
EMBEDDED = "not used by the embedded default (memory storage: tasks run in the serving process)"
EMBEDDED_WARNING = (
    "REDIS_URL is not set: running on the embedded default (memory storage in one process), "
    "fine for the demo and development, not for production: sessions live in the serving "
    "process and are lost with it. Set REDIS_URL, and run workers and beat, for a deployment"
)


class Status(StrEnum):
    """A check's outcome; only FAIL fails the run."""

    OK = "ok"
    WAIT = "wait"
    WARN = "warn"
    FAIL = "fail"


LABELS = {
    Status.OK: ("ok", "green"),
    Status.WAIT: ("wait", "yellow"),
    Status.WARN: ("warn", "yellow"),
    Status.FAIL: ("FAIL", "bold red"),
}


@dataclass(frozen=True)
class Finding:
    """What a probe found; `facts` are for the checks after it, not printed."""

    status: Status
    detail: str
    facts: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Check:
    """One check's outcome."""

    check: str
    finding: Finding

    @property
    def ok(self) -> bool:
        """Passed: ok, wait or warn."""
        return self.finding.status is not Status.FAIL

    def as_json(self) -> dict[str, Any]:
        """`{check, ok, detail, status}`."""
        return {"check": self.check, "ok": self.ok, "detail": self.finding.detail,
                "status": self.finding.status.value}  # fmt: skip


Probe = Callable[[Settings, dict[str, Check]], Finding]


def register(sub: Subparsers) -> None:
    """`doctor`."""
    parser = sub.add_parser(
        "doctor",
        parents=[json_option()],
        help="check Redis, the broker, workers, beat and the archive; exit 1 if any fails",
        description="Checks each dependency of the configured stack, one line each: Redis "
        "(REDIS_URL) and its version, the Celery broker, the workers and the queues they "
        "consume, beat's last expiry sweep (within 2 x CLEANUP_INTERVAL; `wait` while none "
        "has run since the workers started), and that the archive sink is writable. Without "
        "REDIS_URL it warns that the embedded default is not for production. Every check "
        f"gives up after {CHECK_TIMEOUT_S:g} s. --json prints a list of {{check, ok, detail, "
        "status}} (status: ok, wait, warn or fail). Exit 0 unless a check fails, 1 otherwise.",
    )
    parser.set_defaults(handler=run_doctor)


def run_doctor(args: argparse.Namespace, settings: Settings) -> int:
    """Run every check in order, printing each line as it completes."""
    out = make_console()
    results: dict[str, Check] = {}
    for name, probe in PROBES:
        result = run_check(name, probe, settings, results)
        results[name] = result
        if not args.json:
            show(out, check_line(result))
    if args.json:
        print_json([r.as_json() for r in results.values()])
    return EXIT_OK if all(r.ok for r in results.values()) else EXIT_FAILED


def check_line(check: Check) -> Table:
    """`STATUS  NAME      detail`; on a terminal the detail wraps under itself."""
    label, colour = LABELS[check.finding.status]
    line = Table.grid(padding=(0, 2))
    line.add_column(width=4, no_wrap=True)
    line.add_column(width=8, no_wrap=True)
    line.add_column(overflow="fold")
    line.add_row(Text(label, style=colour), Text(check.check), Text(check.finding.detail))
    return line


def run_check(name: str, probe: Probe, settings: Settings, earlier: dict[str, Check]) -> Check:
    """Run a probe in a daemon thread; a failure or no answer in time makes a red line."""
    outcome: list[Finding] = []

    def target() -> None:
        try:
            outcome.append(probe(settings, earlier))
        except Exception as exc:  # noqa: BLE001 - any failure is the check's reason
            outcome.append(Finding(Status.FAIL, f"{type(exc).__name__}: {one_line(exc)}"))

    thread = threading.Thread(target=target, name=f"doctor-{name}", daemon=True)
    thread.start()
    thread.join(CHECK_TIMEOUT_S)
    if not outcome:
        return Check(name, Finding(Status.FAIL, f"no answer within {CHECK_TIMEOUT_S:g} s"))
    return Check(name, outcome[0])


def check_redis(settings: Settings, _: dict[str, Check]) -> Finding:
    """Redis answers INFO; its version. The embedded default is a warning."""
    if settings.storage_backend == "memory":
        return Finding(Status.WARN, EMBEDDED_WARNING)
    import redis

    topology = RedisTopology.from_settings(settings)
    where = topology.describe()
    client = _redis_client(topology)
    try:
        version = _version(client.info("server"))
    except redis.RedisError as exc:
        detail = f"{where} does not answer: {one_line(exc)}. {NO_REDIS_HINT}"
        return Finding(Status.FAIL, detail)
    finally:
        client.close()
    return Finding(Status.OK, f"Redis {version}: {where}, prefix {settings.session_prefix}")


def _version(info: dict[str, Any]) -> str:
    """The server version from INFO (a cluster client answers per node: the first one's)."""
    if "redis_version" in info:
        return str(info["redis_version"])
    first: Any = next(iter(info.values()), {})
    return str(first.get("redis_version", "?")) if isinstance(first, dict) else "?"


def check_broker(settings: Settings, _: dict[str, Check]) -> Finding:
    """The Celery broker accepts a connection."""
    if settings.storage_backend == "memory":
        return Finding(Status.OK, EMBEDDED)
    from kombu.exceptions import OperationalError

    from bridges.persist.persistence import ping_broker

    url = redact_url(settings.broker_url)
    try:
        ping_broker(settings, IO_TIMEOUT_S)
    except (OperationalError, OSError) as exc:
        detail = f"broker at {url} is unreachable: {one_line(exc)}. {NO_BROKER_HINT}"
        return Finding(Status.FAIL, detail)
    prefix = f", key prefix {settings.celery_key_prefix}" if settings.celery_key_prefix else ""
    return Finding(Status.OK, f"broker at {url} reachable{prefix}")


def check_workers(settings: Settings, earlier: dict[str, Check]) -> Finding:
    """Workers answer and, between them, consume every queue; how long the sweepers are up."""
    if settings.storage_backend == "memory":
        return Finding(Status.OK, EMBEDDED)
    if not earlier["broker"].ok:
        return Finding(Status.FAIL, "not checked: the broker is unreachable")
    import celeryconfig

    replies, uptimes = _inspect_workers(settings)
    if not replies:
        detail = f"no worker answered within {INSPECT_TIMEOUT_S:g} s: {START_WORKERS}"
        return Finding(Status.FAIL, detail)
    sweepers = [name for name, queues in replies.items() if SWEEP_QUEUE in queues]
    up_s = [uptimes[name] for name in sweepers if name in uptimes]
    facts = {"sweepers": len(sweepers), "sweepers_up_s": max(up_s, default=None)}
    consumed = {q for queues in replies.values() for q in queues}
    missing = [q for q in celeryconfig.QUEUES if q not in consumed]
    workers = "; ".join(f"{name} ({', '.join(qs)})" for name, qs in sorted(replies.items()))
    if missing:
        detail = f"no worker consumes {', '.join(missing)}: {START_WORKERS}. Up: {workers}"
        return Finding(Status.FAIL, detail, facts)
    return Finding(Status.OK, f"{len(replies)} up: {workers}", facts)


def check_beat(settings: Settings, earlier: dict[str, Check]) -> Finding:
    """The expiry sweep ran within two cleanup intervals, or cannot have run yet."""
    if settings.storage_backend == "memory":
        return Finding(Status.OK, "not used by the embedded default (the serving process sweeps)")
    if not earlier["redis"].ok:
        return Finding(Status.FAIL, "not checked: Redis is unreachable")
    raw = _last_sweep_us(settings)
    facts = earlier["workers"].finding.facts
    last = from_us(raw) if raw is not None else None
    sweepers, up_s = facts.get("sweepers", 0), facts.get("sweepers_up_s")
    return sweep_verdict(last, sweepers, up_s, settings.cleanup_interval_s)


def sweep_verdict(
    last: datetime | None,
    sweepers: int,
    sweepers_up_s: float | None,
    interval_s: int,
    now: datetime | None = None,
) -> Finding:
    """Whether the expiry sweeps run: recent (ok), not due yet since the workers that run them
    started (wait), or overdue or missing while workers have been up long enough (FAIL)."""
    now = now or datetime.now(UTC)
    limit_s = 2 * interval_s
    if last is not None and (now - last).total_seconds() <= limit_s:
        return Finding(
            Status.OK, f"last expiry sweep {since_text(last, now)} (every {interval_s} s)"
        )
    seen = (
        "no expiry sweep recorded"
        if last is None
        else f"last expiry sweep {since_text(last, now)}, older than 2 x CLEANUP_INTERVAL "
        f"({human_duration(limit_s)})"
    )
    if sweepers == 0:
        detail = f"{seen}; none can run: no worker consumes the {SWEEP_QUEUE} queue (see workers)"
        return Finding(Status.FAIL, detail)
    not_due = last is None if sweepers_up_s is None else sweepers_up_s < limit_s
    if not_due:
        return Finding(Status.WAIT, _not_yet(last, sweepers_up_s, interval_s, now))
    if sweepers_up_s is not None:
        seen += f" while workers have been up {human_duration(sweepers_up_s)}"
    return Finding(Status.FAIL, f"{seen}: is beat running? {START_BEAT}")


def _not_yet(
    last: datetime | None, sweepers_up_s: float | None, interval_s: int, now: datetime
) -> str:
    """The detail of a sweep that cannot be due yet."""
    limit_s = 2 * interval_s
    if sweepers_up_s is None:
        since = "(the workers did not say how long they have been up)"
        expect = f"if none is recorded {human_duration(limit_s)} after the start, {START_BEAT}"
    else:
        since = f"since the workers started {human_duration(sweepers_up_s)} ago"
        expect = f"expect one within {human_duration(limit_s - sweepers_up_s)}"
    before = f"; the last one was {since_text(last, now)}" if last is not None else ""
    return f"expiry sweep not run yet {since}{before}: beat runs one every {interval_s} s, {expect}"


def check_archive(settings: Settings, _: dict[str, Check]) -> Finding:
    """The archive sink can be written."""
    sink = build_sink(settings)
    try:
        detail = sink.check(timeout_s=IO_TIMEOUT_S)
    except ArchiveUnavailable as exc:
        return Finding(Status.FAIL, f"{sink.describe()}: {one_line(exc)}. {NO_ARCHIVE_HINT}")
    finally:
        sink.close()
    return Finding(Status.OK, f"{sink.describe()}: {detail}")


PROBES: tuple[tuple[str, Probe], ...] = (
    ("redis", check_redis),
    ("broker", check_broker),
    ("workers", check_workers),
    ("beat", check_beat),
    ("archive", check_archive),
)


def _redis_client(topology: RedisTopology) -> Any:
    timeouts = {"socket_connect_timeout": IO_TIMEOUT_S, "socket_timeout": IO_TIMEOUT_S}
    return replace(topology, extra={**topology.extra, **timeouts}).sync_client(2, IO_TIMEOUT_S)


def _last_sweep_us(settings: Settings) -> int | None:
    """When the last expiry sweep ran (µs), from the store's event counters."""
    store = build_sync_store(settings)
    assert isinstance(store, SyncRedisStore)  # the embedded default has no beat to check
    try:
        return store.events().get("last_sweep_us")
    finally:
        store.close()


def _inspect_workers(settings: Settings) -> tuple[dict[str, list[str]], dict[str, float]]:
    """Each answering worker's queue names, and how long (s) each has been up."""
    from bridges.persist.persistence import celery_client

    app = celery_client(settings)
    options = dict(app.conf.broker_transport_options or {})
    options.update(socket_timeout=IO_TIMEOUT_S, socket_connect_timeout=IO_TIMEOUT_S)
    app.conf.broker_transport_options = options
    try:
        replies = app.control.inspect(timeout=INSPECT_TIMEOUT_S).active_queues() or {}
        names = sorted(replies)
        stats: dict[str, Any] = {}
        if names:  # returns as soon as every worker that answered has answered again
            inspect = app.control.inspect(destination=names, limit=len(names), timeout=0.5)
            stats = inspect.stats() or {}
    finally:
        app.close()
    queues = {name: sorted(q["name"] for q in qs) for name, qs in replies.items()}
    uptimes = {name: float(s["uptime"]) for name, s in stats.items() if "uptime" in s}
    return queues, uptimes
