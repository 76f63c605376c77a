"""Terminal output for the CLI: exit codes, colours, tables, JSON, durations, a progress bar."""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Collection, Iterable, Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, TextIO

if TYPE_CHECKING:
    Subparsers = argparse._SubParsersAction[argparse.ArgumentParser]

EXIT_OK, EXIT_FAILED, EXIT_CONFIG, EXIT_UNAVAILABLE = 0, 1, 2, 3

NO_REDIS_HINT = (
    "Start Redis with `docker compose up -d redis`, or unset REDIS_URL to run on the "
    "embedded default (memory storage, one process)."
)
NO_ARCHIVE_HINT = (
    "Start PostgreSQL with `docker compose up -d postgres` and check ARCHIVE_URL, or unset "
    "ARCHIVE_URL to use the filesystem archive under ARCHIVE_DIR."
)
NO_BROKER_HINT = (
    "Start the broker (`docker compose up -d redis`) or fix CELERY_BROKER_URL / REDIS_URL."
)
EMBEDDED_NOTE = (
    "the embedded default keeps sessions in the serving process; "
    "set REDIS_URL to inspect a running stack"
)

_CODES = {"green": "32", "red": "31", "yellow": "33", "bold": "1", "dim": "2"}


def colour_enabled(stream: TextIO) -> bool:
    """ANSI colour only on a terminal, and never when NO_COLOR is set (no-color.org)."""
    isatty = getattr(stream, "isatty", None)
    return bool(isatty and isatty()) and not os.environ.get("NO_COLOR")


class Style:
    """Wraps text in ANSI codes when enabled; plain text otherwise."""

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled

    @classmethod
    def for_stream(cls, stream: TextIO | None = None) -> Style:
        """The style for a stream (stdout by default)."""
        return cls(colour_enabled(stream or sys.stdout))

    def paint(self, text: str, name: str) -> str:
        """`text` in the named colour or weight."""
        return f"\033[{_CODES[name]}m{text}\033[0m" if self.enabled else text

    def ok(self, ok: bool) -> str:
        """A green `ok` or a red `FAIL`, padded to the same width."""
        return self.paint("ok  ", "green") if ok else self.paint("FAIL", "red")


def table(
    headers: Sequence[str],
    rows: Iterable[Sequence[Any]],
    style: Style | None = None,
    right: Collection[int] = (),
) -> str:
    """Columns padded to their widest cell; the columns numbered in `right` right-aligned."""
    cells = [[_cell(v) for v in row] for row in rows]
    widths = [len(h) for h in headers]
    for row in cells:
        widths = [max(w, len(c)) for w, c in zip(widths, row, strict=True)]
    align = [i in right for i in range(len(headers))]
    head = "  ".join(_pad(h, w, r) for h, w, r in zip(headers, widths, align, strict=True))
    lines = [style.paint(head.rstrip(), "bold") if style else head.rstrip()]
    for row in cells:
        line = "  ".join(_pad(c, w, r) for c, w, r in zip(row, widths, align, strict=True))
        lines.append(line.rstrip())
    return "\n".join(lines)


def pairs(items: Iterable[tuple[str, Any]], style: Style | None = None) -> str:
    """A two-column table of name and value, names dimmed on a terminal."""
    rows = [(name, _cell(value)) for name, value in items]
    width = max((len(name) for name, _ in rows), default=0)
    paint = style.paint if style else (lambda text, _: text)
    return "\n".join(f"{paint(name.ljust(width), 'dim')}  {value}" for name, value in rows)


def json_option() -> argparse.ArgumentParser:
    """A parent parser accepting --json after the subcommand too (`stats --json`)."""
    parent = argparse.ArgumentParser(add_help=False)
    parent.add_argument(
        "--json", action="store_true", default=argparse.SUPPRESS, help="print machine-readable JSON"
    )
    return parent


def compact(value: Any, max_chars: int = 100) -> str:
    """A value as short text: strings as they are, anything else as JSON, cut at `max_chars`."""
    if value is None:
        return "-"
    text = value if isinstance(value, str) else json.dumps(value, default=str)
    return text if len(text) <= max_chars else text[: max_chars - 1] + "…"


def one_line(text: object) -> str:
    """An error's text on one line, without a trailing full stop (a sentence follows it)."""
    return " ".join(str(text).split()).rstrip(".")


def print_json(value: Any, stream: TextIO | None = None) -> None:
    """Pretty JSON; datetimes and other objects as strings."""
    print(json.dumps(value, indent=2, default=str), file=stream or sys.stdout)


def human_duration(seconds: float) -> str:
    """A short duration: 45s, 3m12s, 2h05m, 3d04h."""
    s = max(0, int(seconds))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    if s < 86_400:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    return f"{s // 86_400}d{s % 86_400 // 3600:02d}h"


def since_text(moment: datetime, now: datetime | None = None) -> str:
    """An instant as ISO-8601 UTC with how long ago it was."""
    now = now or datetime.now(UTC)
    ago = human_duration((now - moment).total_seconds())
    return f"{moment.astimezone(UTC).isoformat(timespec='seconds')} ({ago} ago)"


class ProgressBar:
    """`[#####-----] done/total` on one line of a stream, redrawn at most every 0.1 s."""

    def __init__(self, total: int, stream: TextIO, enabled: bool, width: int = 30) -> None:
        self.total = total
        self.stream = stream
        self.enabled = enabled
        self.width = width
        self.done = 0
        self._drawn_at = 0.0

    def advance(self, count: int = 1) -> None:
        """Count finished items and redraw if it is time."""
        self.done += count
        now = time.monotonic()
        if self.enabled and (now - self._drawn_at >= 0.1 or self.done >= self.total):
            self._draw()
            self._drawn_at = now

    def close(self) -> None:
        """Draw the final state and end the line."""
        if self.enabled:
            self._draw()
            self.stream.write("\n")
            self.stream.flush()

    def _draw(self) -> None:
        fraction = min(1.0, self.done / self.total) if self.total else 1.0
        filled = int(fraction * self.width)
        bar = "#" * filled + "-" * (self.width - filled)
        self.stream.write(f"\r[{bar}] {self.done}/{self.total}")
        self.stream.flush()


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.3f}".rstrip("0").rstrip(".")
    return str(value)


def _pad(text: str, width: int, right: bool) -> str:
    return text.rjust(width) if right else text.ljust(width)
