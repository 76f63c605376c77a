"""`opus-sessions archive export`: archive records ended in a time range, as JSONL or CSV."""

from __future__ import annotations

import argparse
import contextlib
import csv
import json
import os
import sys
import tempfile
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

from cli.output import EXIT_CONFIG, EXIT_FAILED, EXIT_OK, isatty, json_option, progress
from sessions.archive import ArchiveRecord, ArchiveSink, FileSystemSink, PostgresSink, json_line
from sessions.redis_ops import redact_url
from sessions.settings import Settings

if TYPE_CHECKING:
    from cli.output import Subparsers

DATE_FORMAT_HELP = "YYYY-MM-DD or an ISO-8601 datetime such as 2025-01-31T12:00:00Z (UTC)"
CSV_COLUMNS = (
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
)


def register(sub: Subparsers) -> None:
    """`archive` and its `export` subcommand."""
    parser = sub.add_parser(
        "archive",
        help="read the archive of finished calls",
        description="Reads the configured archive sink: PostgreSQL at ARCHIVE_URL, or the "
        "filesystem under ARCHIVE_DIR.",
    )
    actions = parser.add_subparsers(dest="action", required=True, metavar="ACTION")
    export = actions.add_parser(
        "export",
        parents=[json_option()],
        help="write the records of calls ended in a time range as JSON lines or CSV",
        description="Writes the archive records of calls ended at or after --since (and "
        "before --until) to --output or stdout. Dates are " + DATE_FORMAT_HELP + ". "
        "CSV columns: " + ", ".join(CSV_COLUMNS) + " (turns and function_calls are counts).",
    )
    export.add_argument(
        "--since",
        required=True,
        type=parse_instant,
        metavar="DATE",
        help="first end time included",
    )
    export.add_argument(
        "--until", type=parse_instant, metavar="DATE", help="end time excluded (default: no bound)"
    )
    export.add_argument("--format", choices=("jsonl", "csv"), default="jsonl")
    export.add_argument("--output", "-o", metavar="FILE", help="write here (default: stdout)")
    export.add_argument(
        "--progress",
        action="store_true",
        help="draw the progress bar even when stderr is not a terminal",
    )
    export.set_defaults(handler=run_export)


def parse_instant(text: str) -> datetime:
    """An argparse type: a date (midnight UTC) or an ISO datetime (naive means UTC)."""
    try:
        moment = datetime.fromisoformat(text.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected {DATE_FORMAT_HELP}, got {text!r}") from None
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


def run_export(args: argparse.Namespace, settings: Settings) -> int:
    """Write the records in range, with a progress bar and a summary on stderr.

    The archive is only read: nothing is created or altered, not even an empty table."""
    since, until = args.since, args.until
    if until is not None and until <= since:
        print(
            f"error: --until ({until.isoformat()}) must be after --since ({since.isoformat()})",
            file=sys.stderr,
        )
        return EXIT_CONFIG
    sink = open_archive(settings)
    try:
        total = count_in_archive(sink, since, until)
        if total is None:
            print(f"error: nothing to export: {_absent(sink)}; nothing was created",
                  file=sys.stderr)  # fmt: skip
            return EXIT_FAILED
        written = _export(args, sink, total)
    except BrokenPipeError:
        raise
    except OSError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_FAILED
    finally:
        sink.close()
    _summary(args, written, sink.describe())
    return EXIT_OK


def _export(args: argparse.Namespace, sink: ArchiveSink, total: int) -> int:
    """Write the records in range to the destination, drawing the progress on stderr."""
    shown = args.progress or isatty(sys.stderr)
    records = sink.iter_since(args.since, args.until)
    with (
        progress(total, sys.stderr, shown, "exporting") as advance,
        _destination(args.output) as out,
    ):
        return write_records(out, args.format, _counted(records, advance))


def open_archive(settings: Settings) -> ArchiveSink:
    """The configured archive sink, opened for reading only."""
    if settings.archive_url:
        url = settings.effective_archive_url or ""
        return PostgresSink(url, settings.archive_table, read_only=True)
    return FileSystemSink(settings.archive_dir)


def count_in_archive(sink: ArchiveSink, since: datetime, until: datetime | None) -> int | None:
    """How many records are in range; None when the archive does not exist (yet)."""
    if isinstance(sink, FileSystemSink):
        return sink.count_since(since, until) if sink.root.is_dir() else None
    from psycopg.errors import UndefinedTable

    try:
        return sink.count_since(since, until)
    except UndefinedTable:
        return None


def write_records(out: TextIO, fmt: str, records: Iterator[ArchiveRecord]) -> int:
    """Write records as JSON lines or CSV rows (with a header); how many were written."""
    count = 0
    if fmt == "csv":
        writer = csv.DictWriter(out, fieldnames=CSV_COLUMNS, lineterminator="\n")
        writer.writeheader()
        for record in records:
            writer.writerow(csv_row(record))
            count += 1
    else:
        for record in records:
            out.write(json_line(record) + "\n")
            count += 1
    return count


def csv_row(record: ArchiveRecord) -> dict[str, Any]:
    """One record's CSV columns; the transcript and function calls as counts."""
    return {
        "conversation_id": record.conversation_id,
        "bridge_type": record.bridge_type,
        "caller": record.caller,
        "status": record.status.value,
        "started_at": record.started_at.isoformat(),
        "ended_at": record.ended_at.isoformat(),
        "duration_s": round(record.duration_s, 3),
        "resumed_count": record.resumed_count,
        "end_reason": record.end_reason or "",
        "turns": len(record.transcript),
        "function_calls": len(record.function_calls),
    }


def _counted(
    records: Iterator[ArchiveRecord], advance: Callable[[int], None]
) -> Iterator[ArchiveRecord]:
    for record in records:
        yield record
        advance(1)


def _absent(sink: ArchiveSink) -> str:
    """What does not exist, in words."""
    if isinstance(sink, PostgresSink):
        return f"table {sink.table} does not exist in {redact_url(sink.url)}"
    where = sink.root if isinstance(sink, FileSystemSink) else sink.describe()
    return f"the archive directory {where} does not exist"


@contextlib.contextmanager
def _destination(path: str | None) -> Iterator[TextIO]:
    """stdout, or a file replaced only once the export is complete."""
    if path is None or path == "-":
        yield sys.stdout
        sys.stdout.flush()
        return
    target = Path(path)
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="") as out:
            yield out
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def _summary(args: argparse.Namespace, written: int, source: str) -> None:
    where = args.output if args.output not in (None, "-") else "stdout"
    if args.json:
        summary = {"records": written, "output": where, "format": args.format, "source": source}
        print(json.dumps(summary), file=sys.stderr)
    else:
        print(f"{written} records written to {where} (from {source})", file=sys.stderr)
