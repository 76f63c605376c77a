"""Entry point of the `opus-sessions` command."""

from __future__ import annotations

import argparse
import asyncio
import importlib.metadata
import json
import logging
import os
import sys
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from cli import doctor, export_cmd, sessions_cmd, stats_cmd
from cli.output import (
    EXIT_CONFIG,
    EXIT_FAILED,
    EXIT_OK,
    EXIT_UNAVAILABLE,
    NO_ARCHIVE_HINT,
    NO_REDIS_HINT,
    json_option,
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
    """`demo`: one scripted call through two bridge instances."""
    parser = sub.add_parser(
        "demo",
        parents=[json_option()],
        help="run a scripted call: greeting, turns, a function call, DTMF, a drop, a resume on "
        "a second bridge instance, the end and the archive",
        description="Starts the realtime simulator and two bridge servers, plays one call and "
        "prints its timeline. Needs no Redis (embedded default); with REDIS_URL set it runs on "
        "Redis and Celery workers.",
    )
    parser.add_argument("--protocol", choices=["audiocodes", "twilio"], default="audiocodes",
                        help="telephony protocol of the call (default: audiocodes)")  # fmt: skip
    parser.add_argument("--with-worker", action="store_true",
                        help="with REDIS_URL: start a Celery worker in this process")  # fmt: skip
    parser.set_defaults(handler=run_demo)


def run_demo(args: argparse.Namespace, settings: Settings) -> int:
    """Run the demo; with --json, print what happened."""
    from cli.demo import DemoFailed
    from cli.demo import run_demo as demo

    try:
        result = asyncio.run(demo(settings, args.protocol, args.with_worker, quiet=args.json))
    except DemoFailed as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_FAILED
    if args.json:
        print(json.dumps(result, indent=2, default=str))
    else:
        print(f"\n{demo_call_line(result)}")
        print(demo_model_line(result))
    return EXIT_OK


def demo_call_line(result: dict[str, Any]) -> str:
    """The demo call in words: turns, DTMF digits, the resume, the end and the archive."""
    after = " (after the greeting)" if result.get("greetings") else ""
    return (
        f"call {result['conversation_id']}: {_counted(result['caller_turns'], 'caller turn')}, "
        f"{_counted(result['bot_answers'], 'bot answer')}{after}, "
        f"{_counted(result['dtmf_digits'], 'DTMF digit')}; resumed {result['resumed_count']}x, "
        f"ended ({result['end_reason']}), archived at {result['archive']}"
    )


def _counted(count: int, noun: str) -> str:
    return f"{count} {noun}{'' if count == 1 else 's'}"


def demo_model_line(result: dict[str, Any]) -> str:
    """The demo's model and token summary, in words."""
    model, usage = result.get("model") or {}, result.get("usage") or {}
    tokens = (
        f"{usage.get('input_tokens', 0)} input ({usage.get('input_audio_tokens', 0)} audio, "
        f"{usage.get('input_text_tokens', 0)} text, {usage.get('cached_tokens', 0)} cached), "
        f"{usage.get('output_tokens', 0)} output ({usage.get('output_audio_tokens', 0)} audio, "
        f"{usage.get('output_text_tokens', 0)} text) over {usage.get('responses', 0)} responses; "
        f"transcription {usage.get('transcription_input_tokens', 0)} in / "
        f"{usage.get('transcription_output_tokens', 0)} out"
    )
    return (
        f"model: {model.get('provider')} {model.get('model')}, voice {model.get('voice')}, audio "
        f"{model.get('input_format')} in / {model.get('output_format')} out, "
        f"{model.get('model_sessions')} model sessions; tokens: {tokens}"
    )


def register_serve(sub: Subparsers) -> None:
    """`serve`: the bridge server."""
    parser = sub.add_parser(
        "serve",
        help="run the bridge server (/ws/audiocodes, /ws/twilio, /health, /stats, /metrics)",
        description="Serves the AudioCodes and Twilio bridges with uvicorn until interrupted; "
        "on shutdown live calls are saved PAUSED so they resume on another instance.",
    )
    parser.add_argument("--host", help="listen address (default: BRIDGE_HOST)")
    parser.add_argument("--port", type=int, help="listen port (default: BRIDGE_PORT)")
    parser.set_defaults(handler=run_serve)


def run_serve(args: argparse.Namespace, settings: Settings) -> int:
    """Serve until interrupted."""
    from bridges.server import serve

    serve(settings, args.host, args.port)
    return EXIT_OK


def register_simulator(sub: Subparsers) -> None:
    """`simulator`: the local realtime-model simulator."""
    parser = sub.add_parser(
        "simulator",
        help="run the local strict Realtime GA simulator (a deterministic model)",
        description="Serves a deterministic realtime model speaking the OpenAI Realtime GA "
        "protocol on ws://HOST:PORT/v1/realtime (and /openai/v1/realtime, Azure's path); it "
        "refuses the beta dialect and any key the protocol does not define. Point "
        "OPENAI_REALTIME_URL at it to run bridges without the internet.",
    )
    parser.add_argument("--host", default="127.0.0.1", help="listen address")
    parser.add_argument("--port", type=int, default=8765, help="listen port (0: any free port)")
    parser.add_argument(
        "--max-session-s",
        type=float,
        default=None,
        help="end each model session after this many seconds, as the real server does at its "
        "cap (default: 3600 announced, never enforced)",
    )
    parser.set_defaults(handler=run_simulator)


def run_simulator(args: argparse.Namespace, settings: Settings) -> int:
    """Serve the simulator until interrupted."""
    from bridges.sim.server import run_simulator as simulate

    asyncio.run(simulate(args.host, args.port, max_session_s=args.max_session_s))
    return EXIT_OK


REGISTRATIONS: tuple[Callable[[Subparsers], None], ...] = (
    register_demo,
    register_serve,
    register_simulator,
    sessions_cmd.register,
    stats_cmd.register,
    export_cmd.register,
    doctor.register,
)


LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def build_parser() -> argparse.ArgumentParser:
    """The parser: global flags, then one subcommand per registration function."""
    parser = argparse.ArgumentParser(
        prog="opus-sessions", description="Resumable voice-call sessions: demo, tools, serving."
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {package_version()}")
    parser.add_argument("--json", action="store_true", help="print machine-readable JSON")
    parser.add_argument("-v", "--verbose", action="store_true", help="log at INFO level")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for register in REGISTRATIONS:
        register(sub)
    return parser


def package_version() -> str:
    """The installed distribution's version (from its metadata)."""
    try:
        return importlib.metadata.version("opus-sessions")
    except importlib.metadata.PackageNotFoundError:
        return "unknown (not installed: run `./dev` or `pip install -e .`)"


def main(argv: Sequence[str] | None = None) -> int:
    """Parse, load the settings, run the subcommand; the exit code says how it went."""
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else EXIT_CONFIG
    quiet = not args.verbose and args.command != "serve"  # a server logs its calls at INFO
    logging.basicConfig(level=logging.WARNING if quiet else logging.INFO, format=LOG_FORMAT)
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
