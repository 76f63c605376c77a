"""Entry point of the `opus-sessions` command."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import sys
from collections.abc import Sequence

from sessions.errors import ConfigError, OpusSessionsError, StorageUnavailable
from sessions.settings import load_settings

EXIT_OK, EXIT_FAILED, EXIT_CONFIG, EXIT_UNAVAILABLE = 0, 1, 2, 3

NO_REDIS_HINT = (
    "Start Redis with `docker compose up -d redis`, or unset REDIS_URL to run on the "
    "embedded default (memory storage, one process)."
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="opus-sessions", description="Resumable voice-call sessions: demo, tools, serving."
    )
    parser.add_argument("--json", action="store_true", help="print machine-readable JSON")
    parser.add_argument("-v", "--verbose", action="store_true", help="log at INFO level")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser(
        "demo",
        help="run one scripted call through create, resume on a second instance, and end",
        description="Runs a scripted call on the configured storage (memory by default) "
        "and prints its timeline.",
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING)
    try:
        settings = load_settings()
        if args.command == "demo":
            from cli.demo import run_demo

            result = asyncio.run(run_demo(settings))
            if args.json:
                print(json.dumps(result, indent=2, default=str))
            return EXIT_OK
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    except StorageUnavailable as exc:
        print(f"error: {exc}\n{NO_REDIS_HINT}", file=sys.stderr)
        return EXIT_UNAVAILABLE
    except OpusSessionsError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_FAILED
    return EXIT_FAILED


if __name__ == "__main__":
    sys.exit(main())
