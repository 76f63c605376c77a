"""`opus-sessions stats`: live counts and the statistics task's last document."""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Mapping
from datetime import datetime
from typing import TYPE_CHECKING, Any

from cli.output import (
    EMBEDDED_NOTE,
    EXIT_OK,
    json_option,
    make_console,
    pairs,
    print_json,
    show,
    since_text,
)
from sessions.clock import from_us
from sessions.factory import build_storage
from sessions.service import SessionManagerService
from sessions.settings import Settings

if TYPE_CHECKING:
    from cli.output import Subparsers

# Shown from the live counters instead; the document's copies are as old as `computed_at`.
LIVE_KEYS = frozenset({"computed_at", "live_sessions", "status_counts", "archive_backlog"})
NOT_COMPUTED = (
    "not computed yet: beat runs opus.maintenance.compute_statistics every STATISTICS_INTERVAL s"
)


def register(sub: Subparsers) -> None:
    """`stats`."""
    parser = sub.add_parser(
        "stats",
        parents=[json_option()],
        help="session counts, resumes, call durations and archive health",
        description="Prints live counts (sessions by status, live sessions, archive backlog) "
        "and the last document of the statistics task (resumes, call-duration percentiles, "
        "archive failures, last sweep). --json prints SessionManagerService.get_session_stats().",
    )
    parser.set_defaults(handler=run_stats)


def run_stats(args: argparse.Namespace, settings: Settings) -> int:
    """Print the statistics as a two-column table (or JSON)."""
    if settings.storage_backend == "memory":
        print(f"note: {EMBEDDED_NOTE}", file=sys.stderr)
    stats = asyncio.run(read_stats(settings))
    if args.json:
        print_json(stats)
    else:
        show(make_console(), pairs(stats_rows(stats)))
    return EXIT_OK


async def read_stats(settings: Settings) -> dict[str, Any]:
    """SessionManagerService.get_session_stats() on the configured storage."""
    service = SessionManagerService(build_storage(settings), session_ttl_s=settings.session_ttl_s)
    await service.start()
    try:
        return await service.get_session_stats()
    finally:
        await service.stop()


def stats_rows(stats: Mapping[str, Any]) -> list[tuple[str, Any]]:
    """Name and value rows: the storage's live counts, then the statistics document."""
    storage = stats["storage_stats"]
    where = storage.get("redis_url") or "this process"
    prefix = f", prefix {storage['session_prefix']}" if "session_prefix" in storage else ""
    rows: list[tuple[str, Any]] = [
        ("backend", f"{storage['backend']} ({where}{prefix})"),
        ("live sessions", stats["active_sessions_count"]),
        ("archive backlog", storage.get("archive_backlog")),
    ]
    rows += [(f"sessions {name}", n) for name, n in sorted(stats["status_counts"].items())]
    document = stats.get("statistics")
    if not document:
        return [*rows, ("statistics", NOT_COMPUTED)]
    rows.append(("statistics computed", _instant(document.get("computed_at"))))
    for key, value in document.items():
        if key not in LIVE_KEYS:
            rows += _document_rows(key, value)
    return rows


def _document_rows(key: str, value: Any) -> list[tuple[str, Any]]:
    if key.endswith("_us"):
        label = key.removesuffix("_us").replace("_", " ")
        return [(label, _instant(from_us(int(value)) if value is not None else None))]
    if isinstance(value, Mapping):
        unit = " s" if key.endswith("_s") else ""
        label = key.removesuffix("_s").replace("_", " ")
        return [
            (f"{label} {name.replace('_', ' ')}", _with_unit(v, "" if name == "count" else unit))
            for name, v in value.items()
        ]
    return [(key.replace("_", " "), value)]


def _instant(value: Any) -> str:
    if value is None:
        return "never"
    moment = value if isinstance(value, datetime) else datetime.fromisoformat(str(value))
    return since_text(moment)


def _with_unit(value: Any, unit: str) -> Any:
    if value is None or not unit:
        return value
    number = f"{value:.3f}".rstrip("0").rstrip(".") if isinstance(value, float) else str(value)
    return number + unit
