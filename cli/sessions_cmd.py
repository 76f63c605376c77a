"""`opus-sessions sessions list|show|end`: live sessions in the configured storage."""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from typing import TYPE_CHECKING, Any

from cli.output import (
    EMBEDDED_NOTE,
    EXIT_CONFIG,
    EXIT_FAILED,
    EXIT_OK,
    EXIT_UNAVAILABLE,
    NO_BROKER_HINT,
    human_duration,
    json_option,
    make_console,
    print_json,
    show,
    since_text,
    styled,
    table,
)
from cli.session_view import show_session
from sessions.clock import utc_now
from sessions.control import RedisCallControl
from sessions.errors import CorruptSession
from sessions.factory import build_sink, build_storage
from sessions.redis_async import RedisSessionStorage
from sessions.redis_ops import redact_url
from sessions.redis_topology import RedisTopology
from sessions.service import SessionManagerService
from sessions.settings import Settings
from sessions.state import SessionState, SessionStatus
from sessions.storage import SessionStorage
from tasks import names
from tasks.redaction import describe_args

if TYPE_CHECKING:
    from cli.output import Subparsers

DEFAULT_LIMIT = 50
DEFAULT_REASON = "ended by operator"
LIST_KEYS = ("conversation_id", "status", "caller", "turns", "resumes")
LOAD_CHUNK = 100


def register(sub: Subparsers) -> None:
    """`sessions` and its `list`, `show` and `end` subcommands."""
    parser = sub.add_parser(
        "sessions",
        help="list, show or end sessions in the configured storage",
        description="Inspect sessions in Redis (REDIS_URL, SESSION_PREFIX) and end live ones.",
    )
    actions = parser.add_subparsers(dest="action", required=True, metavar="ACTION")
    listing = actions.add_parser(
        "list",
        parents=[json_option()],
        help="a table of sessions, most recently active first",
        description="Lists live sessions (with --all, also ended ones awaiting their archive): "
        "id, status, caller, turns, resumes and idle time. --json prints "
        '{"total": N, "shown": n, "sessions": [...]}.',
    )
    listing.add_argument("--all", action="store_true",
                         help="include ended sessions not yet archived (archived calls: "
                         "`archive export`)")  # fmt: skip
    listing.add_argument(
        "--limit",
        type=positive_int,
        default=DEFAULT_LIMIT,
        metavar="N",
        help=f"show at most N sessions (default {DEFAULT_LIMIT})",
    )
    listing.set_defaults(handler=run_list)
    show = actions.add_parser(
        "show",
        parents=[json_option()],
        help="one session's fields, transcript and function calls",
        description="Prints a session's fields, its transcript (role, time, text) and its "
        "function calls, without marking it active. Exit 1 if there is no such session.",
    )
    show.add_argument("conversation_id", metavar="ID")
    show.set_defaults(handler=run_show)
    end = actions.add_parser(
        "end",
        parents=[json_option()],
        help="hang up a live call on its bridge, or end a stored session through the workers",
        description="A call live on a bridge instance (ACTIVE, held by a running bridge) is "
        "hung up there at once: the caller gets the protocol's hang-up and the bridge's final "
        "state holds every turn. Otherwise opus.archive.end_session goes to the archive queue, "
        "as a bridge sends it when a call ends: a worker stores the session ENDED and writes "
        "its archive record. The output says whether a live call was reached.",
    )
    end.add_argument("conversation_id", metavar="ID")
    end.add_argument("--reason", default=DEFAULT_REASON, help=f"default: {DEFAULT_REASON!r}")
    end.add_argument(
        "--wait",
        type=float,
        default=0.0,
        metavar="SECONDS",
        help="wait up to SECONDS for the session to be ended and archived (default: don't)",
    )
    end.set_defaults(handler=run_end)


def positive_int(text: str) -> int:
    """An argparse type: an integer of at least 1."""
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number of at least 1, got {text!r}")
    return value


# -- list ------------------------------------------------------------------------------------


def run_list(args: argparse.Namespace, settings: Settings) -> int:
    """Print the session table (or JSON)."""
    if settings.storage_backend == "memory":
        print(f"note: {EMBEDDED_NOTE}", file=sys.stderr)
    states, total = asyncio.run(_collect(settings, args.all, args.limit))
    if args.json:
        print_json({"total": total, "shown": len(states), "sessions": [_row(s) for s in states]})
        return EXIT_OK
    kind = "stored" if args.all else "live"
    where = _where(settings)
    if not states:
        print(f"no {kind} sessions {where}")
        return EXIT_OK
    headers = ("ID", "STATUS", "CALLER", "TURNS", "RESUMES", "IDLE")
    rows = [[r[k] for k in LIST_KEYS] + [human_duration(r["idle_s"])] for r in map(_row, states)]
    summary = styled(f"{len(states)} of {total} {kind} sessions {where}", "dim")
    show(make_console(), table(headers, rows, right={3, 4, 5}), summary)
    return EXIT_OK


async def _collect(
    settings: Settings, include_ended: bool, limit: int
) -> tuple[list[SessionState], int]:
    """The `limit` most recently active sessions, and how many there are in all."""
    storage = build_storage(settings)
    try:
        if include_ended and isinstance(storage, RedisSessionStorage):
            ids = await _stored_ids(storage)
            states = await _load_all(storage, ids)
        else:
            ids = await SessionManagerService(storage).list_active_sessions()
            states = await _load_all(storage, ids[::-1][:limit])
    finally:
        await storage.close()
    states.sort(key=lambda s: s.last_activity, reverse=True)
    return states[:limit], len(ids)


async def _stored_ids(storage: RedisSessionStorage) -> list[str]:
    """Live sessions and ended ones still waiting for their archive, from the indexes."""
    live = await storage.list_active_sessions()
    return live + await storage.list_unarchived_ended_sessions()


async def _load_all(storage: SessionStorage, ids: list[str]) -> list[SessionState]:
    """The states of `ids` (without touching them), skipping ones gone or undecodable."""
    states: list[SessionState] = []
    corrupt = 0
    for start in range(0, len(ids), LOAD_CHUNK):
        chunk = ids[start : start + LOAD_CHUNK]
        loaded = await asyncio.gather(
            *(storage.load(cid, touch=False) for cid in chunk), return_exceptions=True
        )
        for item in loaded:
            if isinstance(item, CorruptSession):
                corrupt += 1
            elif isinstance(item, BaseException):
                raise item
            elif item is not None:
                states.append(item)
    if corrupt:
        print(f"warning: {corrupt} stored sessions could not be decoded", file=sys.stderr)
    return states


def _row(state: SessionState) -> dict[str, Any]:
    return {
        "conversation_id": state.conversation_id,
        "status": state.status.value,
        "caller": state.caller,
        "turns": state.current_turn,
        "resumes": state.resumed_count,
        "idle_s": round(_idle_s(state), 3),
        "last_activity": state.last_activity.isoformat(),
    }


def _idle_s(state: SessionState) -> float:
    return (utc_now() - state.last_activity).total_seconds()


# -- show ------------------------------------------------------------------------------------


def run_show(args: argparse.Namespace, settings: Settings) -> int:
    """Print one session, its transcript and its function calls."""
    if settings.storage_backend == "memory":
        print(f"error: {EMBEDDED_NOTE}", file=sys.stderr)
        return EXIT_CONFIG
    state = asyncio.run(_load_one(settings, args.conversation_id))
    if state is None:
        print(_missing(settings, args.conversation_id), file=sys.stderr)
        return EXIT_FAILED
    if args.json:
        data = state.to_dict()
        data.pop("audio_buffer", None)
        data["audio_buffer_bytes"] = sum(len(chunk) for chunk in state.audio_buffer)
        print_json(data)
        return EXIT_OK
    show_session(state)
    return EXIT_OK


async def _load_one(settings: Settings, conversation_id: str) -> SessionState | None:
    storage = build_storage(settings)
    try:
        return await storage.load(conversation_id, touch=False)
    finally:
        await storage.close()


def _missing(settings: Settings, conversation_id: str) -> str:
    return (
        f"error: no session {conversation_id!r} {_where(settings)}. An archived call leaves "
        "Redis after ARCHIVED_SESSION_RETENTION; find it with "
        "`opus-sessions archive export --since DATE`."
    )


def _where(settings: Settings) -> str:
    if settings.storage_backend == "memory":
        return "in this process (embedded default)"
    where = RedisTopology.from_settings(settings).describe()
    return f"under prefix {settings.session_prefix!r} in {where}"


# -- end -------------------------------------------------------------------------------------


def run_end(args: argparse.Namespace, settings: Settings) -> int:
    """Hang up a live call on the bridge holding it; a call no bridge holds ends through the
    archive queue, as the bridges end theirs."""
    if settings.storage_backend == "memory":
        print(f"error: {EMBEDDED_NOTE}", file=sys.stderr)
        return EXIT_CONFIG
    cid = args.conversation_id
    state = asyncio.run(_load_one(settings, cid))
    if state is None:
        print(_missing(settings, cid), file=sys.stderr)
        return EXIT_FAILED
    if state.status is SessionStatus.ENDED:
        when = since_text(state.ended_at) if state.ended_at else "at an unknown time"
        outcome = {"conversation_id": cid, "sent": False, "end_reason": state.end_reason}
        _say(args, outcome, f"session {cid!r} already ended {when} ({state.end_reason}); not sent")
        return EXIT_OK
    holder = state.session_id if state.status is SessionStatus.ACTIVE else None
    if holder and asyncio.run(_hang_up_live(settings, cid, args.reason)):
        outcome = {"conversation_id": cid, "live_call": True, "holder": holder, "sent": False,
                   "reason": args.reason, "sink": build_sink(settings).describe()}  # fmt: skip
        text = (f"hung up the live call {cid} on {holder} ({args.reason}); the bridge stores "
                "its final state and a worker archives it")  # fmt: skip
        return _finish_end(args, settings, outcome, text)
    from kombu.exceptions import OperationalError

    try:
        task_id = _send_end(settings, cid, args.reason)
    except OperationalError as exc:
        broker = redact_url(settings.broker_url)
        print(f"error: broker at {broker} is unavailable: {exc}\n{NO_BROKER_HINT}", file=sys.stderr)
        return EXIT_UNAVAILABLE
    sink = build_sink(settings).describe()
    outcome = {
        "conversation_id": cid,
        "live_call": False,
        "holder": holder,
        "sent": True,
        "task": names.END_SESSION,
        "task_id": task_id,
        "queue": "archive",
        "reason": args.reason,
        "sink": sink,
    }
    nobody = f"{holder} did not answer" if holder else f"no bridge holds it ({state.status.value})"
    text = (
        f"no live call reached ({nobody}); sent {names.END_SESSION}({cid!r}, {args.reason!r}) "
        f"to the archive queue, task {task_id}"
    )
    if args.wait <= 0:
        _say(args, outcome, f"{text}\na worker stores it ENDED and archives it to {sink}")
        return EXIT_OK
    return _finish_end(args, settings, outcome, text)


async def _hang_up_live(settings: Settings, conversation_id: str, reason: str) -> bool:
    """Ask the bridge that holds the call live to hang it up; True when it did."""
    storage = build_storage(settings)
    assert isinstance(storage, RedisSessionStorage)
    control = RedisCallControl(storage.client, storage.ops.keys)
    try:
        return await SessionManagerService(storage, control=control).hang_up_live(
            conversation_id, reason
        )
    finally:
        await storage.close()


def _finish_end(
    args: argparse.Namespace, settings: Settings, outcome: dict[str, Any], text: str
) -> int:
    """Report an end, waiting for its archive with --wait."""
    cid, sink = outcome["conversation_id"], outcome["sink"]
    if args.wait <= 0:
        _say(args, outcome, text)
        return EXIT_OK
    outcome.update(asyncio.run(_wait_ended(settings, cid, args.wait)))
    if outcome["archived"]:
        _say(args, outcome, f"{text}\nended and archived to {sink}")
        return EXIT_OK
    stage = "ended but not archived" if outcome["ended"] else "not ended"
    _say(
        args,
        outcome,
        f"{text}\n{stage} after {args.wait:g} s: is a worker consuming the "
        "archive queue? Run `opus-sessions doctor`.",
    )
    return EXIT_FAILED


def _send_end(settings: Settings, conversation_id: str, reason: str) -> str:
    """Publish the end task; its id."""
    from bridges.persist.persistence import celery_client

    app = celery_client(settings)
    try:
        args = [conversation_id, reason, None]
        shown = describe_args(names.END_SESSION, args)
        return str(app.send_task(names.END_SESSION, args=args, argsrepr=shown).id)
    finally:
        app.close()


async def _wait_ended(settings: Settings, conversation_id: str, timeout_s: float) -> dict[str, Any]:
    """Poll until the session is ENDED and its archive record exists, or time runs out."""
    storage, sink = build_storage(settings), build_sink(settings)
    deadline = time.monotonic() + timeout_s
    ended = False
    try:
        while time.monotonic() < deadline:
            state = await storage.load(conversation_id, touch=False)
            ended = state is None or state.status is SessionStatus.ENDED
            if ended and await asyncio.to_thread(sink.read, conversation_id) is not None:
                return {"ended": True, "archived": True}
            await asyncio.sleep(0.1)
    finally:
        await storage.close()
        sink.close()
    return {"ended": ended, "archived": False}


def _say(args: argparse.Namespace, outcome: dict[str, Any], text: str) -> None:
    if args.json:
        print_json(outcome)
    else:
        print(text)
