"""`opus-sessions doctor`: one line per dependency of a running stack, each with a short timeout."""

from __future__ import annotations

import argparse
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

from cli.output import (
    EXIT_FAILED,
    EXIT_OK,
    NO_ARCHIVE_HINT,
    NO_BROKER_HINT,
    NO_REDIS_HINT,
    Style,
    human_duration,
    json_option,
    one_line,
    print_json,
    since_text,
)
from sessions.archive import ArchiveUnavailable
from sessions.clock import from_us
from sessions.factory import build_sink
from sessions.keys import KeySpace
from sessions.redis_ops import redact_url
from sessions.settings import Settings

if TYPE_CHECKING:
    from cli.output import Subparsers

CHECK_TIMEOUT_S = 2.0
IO_TIMEOUT_S = 1.5
INSPECT_TIMEOUT_S = 1.0
START_WORKERS = (
    "start workers with `docker compose up -d worker worker-archive`, or "
    "`celery -A workers.app worker -Q persistence,archive,maintenance`"
)
START_BEAT = "start beat with `docker compose up -d beat` or `celery -A workers.app beat`"
EMBEDDED = "not used by the embedded default (memory storage: tasks run in the serving process)"


@dataclass(frozen=True)
class Check:
    """One check's outcome."""

    check: str
    ok: bool
    detail: str


Probe = Callable[[Settings, dict[str, Check]], tuple[bool, str]]


def register(sub: Subparsers) -> None:
    """`doctor`."""
    parser = sub.add_parser(
        "doctor",
        parents=[json_option()],
        help="check Redis, the broker, workers, beat and the archive; exit 1 if any fails",
        description="Checks each dependency of the configured stack, one line each: Redis "
        "(REDIS_URL) and its version, the Celery broker, the workers and the queues they "
        "consume, beat's last expiry sweep (within 2 x CLEANUP_INTERVAL), and that the "
        f"archive sink is writable. Every check gives up after {CHECK_TIMEOUT_S:g} s. "
        "--json prints a list of {check, ok, detail}. Exit 0 when all pass, 1 otherwise.",
    )
    parser.set_defaults(handler=run_doctor)


def run_doctor(args: argparse.Namespace, settings: Settings) -> int:
    """Run every check in order, printing each line as it completes."""
    style = Style.for_stream()
    results: dict[str, Check] = {}
    for name, probe in PROBES:
        result = run_check(name, probe, settings, results)
        results[name] = result
        if not args.json:
            print(f"{style.ok(result.ok)}  {name:<8}  {result.detail}", flush=True)
    if args.json:
        print_json([asdict(r) for r in results.values()])
    return EXIT_OK if all(r.ok for r in results.values()) else EXIT_FAILED


def run_check(name: str, probe: Probe, settings: Settings, earlier: dict[str, Check]) -> Check:
    """Run a probe in a daemon thread; a failure or no answer in time makes a red line."""
    outcome: list[tuple[bool, str]] = []

    def target() -> None:
        try:
            outcome.append(probe(settings, earlier))
        except Exception as exc:  # noqa: BLE001 - any failure is the check's reason
            outcome.append((False, f"{type(exc).__name__}: {one_line(exc)}"))

    thread = threading.Thread(target=target, name=f"doctor-{name}", daemon=True)
    thread.start()
    thread.join(CHECK_TIMEOUT_S)
    if not outcome:
        return Check(name, False, f"no answer within {CHECK_TIMEOUT_S:g} s")
    ok, detail = outcome[0]
    return Check(name, ok, detail)


def check_redis(settings: Settings, _: dict[str, Check]) -> tuple[bool, str]:
    """Redis answers INFO; its version."""
    if settings.storage_backend == "memory":
        return True, "embedded default in use (memory storage, one process): Redis is not needed"
    import redis

    url = settings.effective_redis_url
    client = _redis_client(settings)
    try:
        version = client.info("server")["redis_version"]
    except redis.RedisError as exc:
        return (
            False,
            f"Redis at {redact_url(url)} does not answer: {one_line(exc)}. {NO_REDIS_HINT}",
        )
    finally:
        client.close()
    return True, f"Redis {version} at {redact_url(url)}, prefix {settings.session_prefix}"


def check_broker(settings: Settings, _: dict[str, Check]) -> tuple[bool, str]:
    """The Celery broker accepts a connection."""
    if settings.storage_backend == "memory":
        return True, EMBEDDED
    from kombu.exceptions import OperationalError

    from bridges.persist.persistence import ping_broker

    url = redact_url(settings.broker_url)
    try:
        ping_broker(settings.broker_url, IO_TIMEOUT_S)
    except (OperationalError, OSError) as exc:
        return False, f"broker at {url} is unreachable: {one_line(exc)}. {NO_BROKER_HINT}"
    prefix = f", key prefix {settings.celery_key_prefix}" if settings.celery_key_prefix else ""
    return True, f"broker at {url} reachable{prefix}"


def check_workers(settings: Settings, earlier: dict[str, Check]) -> tuple[bool, str]:
    """Workers answer and, between them, consume every queue."""
    if settings.storage_backend == "memory":
        return True, EMBEDDED
    if not earlier["broker"].ok:
        return False, "not checked: the broker is unreachable"
    import celeryconfig

    replies = _active_queues(settings)
    if not replies:
        return False, f"no worker answered within {INSPECT_TIMEOUT_S:g} s: {START_WORKERS}"
    consumed = {q for queues in replies.values() for q in queues}
    missing = [q for q in celeryconfig.QUEUES if q not in consumed]
    workers = "; ".join(f"{name} ({', '.join(qs)})" for name, qs in sorted(replies.items()))
    if missing:
        return False, f"no worker consumes {', '.join(missing)}: {START_WORKERS}. Up: {workers}"
    return True, f"{len(replies)} up: {workers}"


def check_beat(settings: Settings, earlier: dict[str, Check]) -> tuple[bool, str]:
    """The expiry sweep ran within two cleanup intervals."""
    if settings.storage_backend == "memory":
        return True, "not used by the embedded default (the serving process sweeps itself)"
    if not earlier["redis"].ok:
        return False, "not checked: Redis is unreachable"
    client = _redis_client(settings)
    try:
        raw = client.hget(KeySpace(settings.session_prefix).events, "last_sweep_us")
    finally:
        client.close()
    limit_s = 2 * settings.cleanup_interval_s
    if raw is None:
        return False, f"no expiry sweep recorded (prefix {settings.session_prefix}): {START_BEAT}"
    last = from_us(int(raw))
    age_s = time.time() - int(raw) / 1e6
    if age_s > limit_s:
        return False, (
            f"last expiry sweep {since_text(last)}, older than 2 x CLEANUP_INTERVAL "
            f"({human_duration(limit_s)}): is beat running? {START_BEAT}"
        )
    return True, f"last expiry sweep {since_text(last)} (every {settings.cleanup_interval_s} s)"


def check_archive(settings: Settings, _: dict[str, Check]) -> tuple[bool, str]:
    """The archive sink can be written."""
    sink = build_sink(settings)
    try:
        detail = sink.check(timeout_s=IO_TIMEOUT_S)
    except ArchiveUnavailable as exc:
        return False, f"{sink.describe()}: {one_line(exc)}. {NO_ARCHIVE_HINT}"
    finally:
        sink.close()
    return True, f"{sink.describe()}: {detail}"


PROBES: tuple[tuple[str, Probe], ...] = (
    ("redis", check_redis),
    ("broker", check_broker),
    ("workers", check_workers),
    ("beat", check_beat),
    ("archive", check_archive),
)


def _redis_client(settings: Settings) -> Any:
    import redis

    return redis.Redis.from_url(
        settings.effective_redis_url,
        socket_connect_timeout=IO_TIMEOUT_S,
        socket_timeout=IO_TIMEOUT_S,
        decode_responses=True,
        **settings.redis_kwargs(),
    )


def _active_queues(settings: Settings) -> dict[str, list[str]]:
    """Each answering worker's queue names."""
    from bridges.persist.persistence import celery_client

    app = celery_client(settings)
    options = dict(app.conf.broker_transport_options or {})
    options.update(socket_timeout=IO_TIMEOUT_S, socket_connect_timeout=IO_TIMEOUT_S)
    app.conf.broker_transport_options = options
    try:
        replies = app.control.inspect(timeout=INSPECT_TIMEOUT_S).active_queues() or {}
    finally:
        app.close()
    return {name: sorted(q["name"] for q in queues) for name, queues in replies.items()}
