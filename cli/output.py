"""Terminal output for the CLI: exit codes, a rich console, tables, JSON, durations, progress.

Tables and progress are drawn with rich. On a terminal they get colour (unless NO_COLOR is
set) and wrap to its width; anywhere else the text is plain, one row a line, without
trailing blanks, so it can be read by scripts and tests.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
from collections.abc import Callable, Collection, Iterable, Iterator, Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, TextIO

from rich.console import Console, RenderableType
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table
from rich.text import Text

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
# Off a terminal lines are never wrapped: one row of a table is one line of text.
PLAIN_WIDTH = 100_000


def isatty(stream: TextIO) -> bool:
    """Whether a stream is a terminal (streams without `isatty` are not)."""
    probe = getattr(stream, "isatty", None)
    return bool(probe and probe())


def colour_enabled(stream: TextIO) -> bool:
    """Colour only on a terminal, and never when NO_COLOR is set (no-color.org)."""
    return isatty(stream) and not os.environ.get("NO_COLOR")


def make_console(stream: TextIO | None = None, terminal: bool | None = None) -> Console:
    """A console writing to `stream` (stdout by default); `terminal` overrides the detection."""
    stream = stream or sys.stdout
    is_terminal = isatty(stream) if terminal is None else terminal
    return Console(
        file=stream,
        force_terminal=is_terminal,
        color_system="auto" if colour_enabled(stream) else None,
        width=None if is_terminal else PLAIN_WIDTH,
        markup=False,
        emoji=False,
        highlight=False,
    )


def show(console: Console, *renderables: RenderableType) -> None:
    """Print each renderable on its own lines; off a terminal, without trailing blanks."""
    for renderable in renderables:
        if console.is_terminal:
            console.print(renderable)
            continue
        with console.capture() as captured:
            console.print(renderable)
        lines = captured.get().splitlines()
        console.file.write("".join(line.rstrip() + "\n" for line in lines))
    console.file.flush()


def table(
    headers: Sequence[str], rows: Iterable[Sequence[Any]], right: Collection[int] = ()
) -> Table:
    """Columns under bold headers, two spaces apart; the columns numbered in `right` align right."""
    grid = Table(box=None, pad_edge=False, padding=(0, 1), header_style="bold")
    for i, header in enumerate(headers):
        grid.add_column(header, justify="right" if i in right else "left")
    for row in rows:
        grid.add_row(*(Text(_cell(value)) for value in row))
    return grid


def pairs(items: Iterable[tuple[str, Any]]) -> Table:
    """A two-column table of name and value, names dimmed on a terminal."""
    grid = Table.grid(padding=(0, 2))
    grid.add_column(style="dim")
    grid.add_column()
    for name, value in items:
        grid.add_row(Text(name), Text(_cell(value)))
    return grid


def styled(text: str, style: str) -> Text:
    """Plain text (never markup) in a rich style such as `bold` or `dim`."""
    return Text(text, style=style)


@contextlib.contextmanager
def progress(
    total: int, stream: TextIO, enabled: bool, what: str
) -> Iterator[Callable[[int], None]]:
    """A progress bar on `stream` (`what  ━━━━  done/total  elapsed`); yields `advance(n)`."""
    if not enabled:
        yield lambda _: None
        return
    console = make_console(stream, terminal=True)
    columns = (TextColumn(what), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, console=console, redirect_stdout=False, redirect_stderr=False) as bar:
        task = bar.add_task(what, total=total)
        yield lambda count: bar.advance(task, count)


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


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.3f}".rstrip("0").rstrip(".")
    return str(value)
