"""What a task's arguments may show: ids, sizes and counts, never a caller's number or words.

Flower, the `task-sent` / `task-received` events, worker logs and retries show a task's
`argsrepr` instead of its arguments. Save batches and final snapshots carry whole
transcripts and callers' numbers, so every task is sent with the summary made here, and
`RedactedTask` gives every retry the same.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from celery import Task

from tasks import names

MAX_IDS_SHOWN = 5


def describe_args(task_name: str, args: Sequence[Any] | None) -> str:
    """The arguments of a task as they may be shown."""
    args = list(args or ())
    if task_name == names.SAVE_SESSIONS and args:
        return f"(batch of {_snapshots(args[0])} snapshots, {_size(args[0])} bytes)"
    if task_name == names.END_SESSION and args:
        final = "with" if len(args) > 2 and args[2] else "without"
        return f"({_id(args[0])}, reason of {len(str(args[1])) if len(args) > 1 else 0} " \
            f"characters, {final} a final snapshot)"  # fmt: skip
    if task_name == names.ARCHIVE_SESSION and args:
        return f"({_id(args[0])})"
    if task_name == names.ARCHIVE_SESSIONS and args and isinstance(args[0], list):
        ids = [_id(i) for i in args[0][:MAX_IDS_SHOWN]]
        more = f", +{len(args[0]) - MAX_IDS_SHOWN} more" if len(args[0]) > MAX_IDS_SHOWN else ""
        return f"({len(args[0])} ids: {', '.join(ids)}{more})"
    return f"({len(args)} arguments)"


def describe_kwargs(kwargs: dict[str, Any] | None) -> str:
    """Keyword arguments as they may be shown: names and numbers only."""
    shown = {k: v for k, v in (kwargs or {}).items() if isinstance(v, int | float)}
    return repr(shown) if len(shown) == len(kwargs or {}) else f"({len(kwargs or {})} kwargs)"


class RedactedTask(Task):  # type: ignore[misc]
    """Every send of the task (first, retry, replay) shows `describe_args`, not the data."""

    def apply_async(self, args: Any = None, kwargs: Any = None, **options: Any) -> Any:
        options.setdefault("argsrepr", describe_args(self.name, args))
        options.setdefault("kwargsrepr", describe_kwargs(kwargs))
        return super().apply_async(args, kwargs, **options)


def _snapshots(batch: Any) -> int:
    if isinstance(batch, str):
        return batch.count('"conversation_id":')
    return len(batch) if isinstance(batch, list) else 0


def _size(value: Any) -> int:
    return len(value) if isinstance(value, str) else len(repr(value))


def _id(value: Any) -> str:
    return repr(str(value)[:128])
