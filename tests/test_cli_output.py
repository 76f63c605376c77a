"""What the CLI prints: its version, rich tables as plain text off a terminal, progress, and
an export that only reads the archive."""

from __future__ import annotations

import importlib.metadata
import io
import json
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import psycopg
import pytest

from cli.main import EXIT_FAILED, EXIT_OK
from cli.output import make_console, pairs, show, table
from sessions.archive import FileSystemSink, PostgresSink
from tests.services import NO_POSTGRES_HELP, archive_test_url, drop_table, postgres_answers
from tests.test_cli import archive_dir, call, create_sessions, record, run  # noqa: F401 - fixture

MARKUP = "[bold red]not markup[/bold red]"
ENDED = datetime(2024, 5, 1, 10, 0, tzinfo=UTC)


@pytest.fixture
def archive(request: pytest.FixtureRequest) -> Path:
    """The CLI's environment on this test's keys (`archive_dir`); the archive directory."""
    path: Path = request.getfixturevalue("archive_dir")
    return path


class Terminal(io.StringIO):
    """A stream that says it is a terminal."""

    def isatty(self) -> bool:
        return True


def test_version_prints_the_package_version(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "--version")
    assert (
        code == EXIT_OK and out == f"opus-sessions {importlib.metadata.version('opus-sessions')}\n"
    )


def test_tables_off_a_terminal_are_plain_lines_without_trailing_blanks() -> None:
    stream = io.StringIO()
    show(make_console(stream), table(("ID", "TURNS"), [("a1", 3), ("b22", 12)], right={1}))
    assert stream.getvalue() == "ID   TURNS\na1       3\nb22     12\n"


def test_a_terminal_gets_colour_unless_no_color_is_set(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NO_COLOR", raising=False)
    coloured = Terminal()
    show(make_console(coloured), table(("ID",), [("a1",)]))
    assert "\x1b[" in coloured.getvalue()
    monkeypatch.setenv("NO_COLOR", "1")
    plain = Terminal()
    show(make_console(plain), table(("ID",), [("a1",)]), pairs([("name", "value")]))
    assert "\x1b[" not in plain.getvalue() and "a1" in plain.getvalue()


def test_text_from_sessions_is_printed_as_it_is_never_as_markup(
    capsys: pytest.CaptureFixture[str], archive: Path, redis_url: str, key_prefix: str
) -> None:
    state = call("m1")
    state.add_conversation_item({"role": "user", "content": MARKUP})
    create_sessions(redis_url, key_prefix, state)
    code, out, _ = run(capsys, "sessions", "show", "m1")
    assert code == EXIT_OK and MARKUP in out and "\x1b[" not in out
    code, out, _ = run(capsys, "--json", "sessions", "show", "m1")
    assert json.loads(out)["conversation_history"][0]["content"] == MARKUP


def test_list_json_is_plain_json(
    capsys: pytest.CaptureFixture[str], archive: Path, redis_url: str, key_prefix: str
) -> None:
    create_sessions(redis_url, key_prefix, call("j1", turns=2))
    code, out, _ = run(capsys, "sessions", "list", "--json")
    listing = json.loads(out)
    assert code == EXIT_OK and listing["total"] == 1
    assert listing["sessions"][0]["conversation_id"] == "j1" and "\x1b" not in out


def test_export_draws_no_progress_off_a_terminal_unless_asked(
    capsys: pytest.CaptureFixture[str], archive: Path
) -> None:
    FileSystemSink(archive).write(record("p1", ENDED))
    code, out, err = run(capsys, "archive", "export", "--since", "2024-01-01")
    assert code == EXIT_OK and [
        json.loads(line)["conversation_id"] for line in out.splitlines()
    ] == ["p1"]
    assert err == f"1 records written to stdout (from filesystem:{archive})\n"
    code, _, err = run(capsys, "archive", "export", "--since", "2024-01-01", "--progress")
    assert code == EXIT_OK and "exporting" in err and "1/1" in err


# -- an export only reads ----------------------------------------------------------------


@pytest.fixture
def missing_table(monkeypatch: pytest.MonkeyPatch, archive: Path) -> Iterator[str]:
    """ARCHIVE_URL set, ARCHIVE_TABLE naming a table that does not exist."""
    url, name = archive_test_url(), f"cli_absent_{uuid.uuid4().hex[:10]}"
    if not postgres_answers(url):
        pytest.fail(NO_POSTGRES_HELP.format(url=url))
    monkeypatch.setenv("ARCHIVE_URL", url)
    monkeypatch.setenv("ARCHIVE_TABLE", name)
    yield name
    drop_table(url, name)  # in case a regression created it


def table_exists(name: str) -> bool:
    with psycopg.connect(archive_test_url(), autocommit=True) as conn:
        row = conn.execute("SELECT to_regclass(%s)", (name,)).fetchone()
    return row is not None and row[0] is not None


def test_export_of_a_missing_table_says_so_and_creates_nothing(
    capsys: pytest.CaptureFixture[str], missing_table: str, tmp_path: Path
) -> None:
    output = tmp_path / "calls.jsonl"
    code, out, err = run(capsys, "archive", "export", "--since", "2024-01-01", "-o", str(output))
    assert code == EXIT_FAILED and out == ""
    assert f"nothing to export: table {missing_table} does not exist" in err
    assert not table_exists(missing_table) and list(tmp_path.iterdir()) == []


def test_export_of_a_missing_archive_directory_creates_nothing(
    capsys: pytest.CaptureFixture[str], archive: Path
) -> None:
    code, out, err = run(capsys, "archive", "export", "--since", "2024-01-01")
    assert code == EXIT_FAILED and out == ""
    assert f"the archive directory {archive} does not exist" in err
    assert not archive.exists()


def test_a_read_only_archive_reads_and_refuses_writes(missing_table: str) -> None:
    url = archive_test_url()
    writer = PostgresSink(url, missing_table)  # creates its table on first use
    writer.write(record("w1", ENDED))
    writer.close()
    reader = PostgresSink(url, missing_table, read_only=True)
    try:
        assert reader.count_since(ENDED) == 1
        with pytest.raises(psycopg.errors.ReadOnlySqlTransaction):
            reader.write(record("w2", ENDED))
    finally:
        reader.close()
