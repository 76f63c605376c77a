"""Entry point of the `opus-sessions` command."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import sys
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from cli import doctor, export_cmd, sessions_cmd, stats_cmd
from cli.output import (
    EXIT_CONFIG,
    EXIT_FAILED,
    EXIT_OK,
    EXIT_UNAVAILABLE,
    NO_ARCHIVE_HINT,
    NO_REDIS_HINT,
)
from sessions.archive import ArchiveUnavailable
from sessions.errors import (
    ConfigError,
    InvalidConversationId,
    OpusSessionsError,
    StorageUnavailable,
)
from sessions.settings import Settings, load_settings

if TYPE_CHECKING:
    from cli.output import Subparsers

__all__ = [
    "EXIT_CONFIG",
    "EXIT_FAILED",
    "EXIT_OK",
    "EXIT_UNAVAILABLE",
    "NO_REDIS_HINT",
    "build_parser",
    "main",
]


def register_demo(sub: Subparsers) -> None:
    """`demo`: one scripted call through the session core."""
    parser = sub.add_parser(
        "demo",
        help="run one scripted call through create, resume on a second instance, and end",
        description="Runs a scripted call on the configured storage (memory by default) "
        "and prints its timeline.",
    )
    parser.set_defaults(handler=run_demo)


def run_demo(args: argparse.Namespace, settings: Settings) -> int:
    """Run the demo; with --json, print what happened."""
    from cli.demo import run_demo as demo

    result = asyncio.run(demo(settings))
    if args.json:
        print(json.dumps(result, indent=2, default=str))
    return EXIT_OK


REGISTRATIONS: tuple[Callable[[Subparsers], None], ...] = (
    register_demo,
    sessions_cmd.register,
    stats_cmd.register,
    export_cmd.register,
    doctor.register,
)


def build_parser() -> argparse.ArgumentParser:
    """The parser: global flags, then one subcommand per registration function."""
    parser = argparse.ArgumentParser(
        prog="opus-sessions", description="Resumable voice-call sessions: demo, tools, serving."
    )
    parser.add_argument("--json", action="store_true", help="print machine-readable JSON")
    parser.add_argument("-v", "--verbose", action="store_true", help="log at INFO level")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for register in REGISTRATIONS:
        register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Parse, load the settings, run the subcommand; the exit code says how it went."""
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else EXIT_CONFIG
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING)
    try:
        settings = load_settings()
        code: int = args.handler(args, settings)
        return code
    except (ConfigError, InvalidConversationId) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    except StorageUnavailable as exc:
        print(f"error: {exc}\n{NO_REDIS_HINT}", file=sys.stderr)
        return EXIT_UNAVAILABLE
    except ArchiveUnavailable as exc:
        print(f"error: {exc}\n{NO_ARCHIVE_HINT}", file=sys.stderr)
        return EXIT_UNAVAILABLE
    except OpusSessionsError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_FAILED
    except BrokenPipeError:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_FAILED
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
