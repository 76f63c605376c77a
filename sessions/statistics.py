"""Live statistics computed from the stores' counters and indexes (no scan of sessions)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from sessions.clock import utc_now
from sessions.storage import SyncSessionStore
from sessions.usage import ModelUsage


def percentile(sorted_values: Sequence[float], fraction: float) -> float | None:
    """Nearest-rank percentile of already sorted values (None when empty)."""
    if not sorted_values:
        return None
    rank = max(1, math.ceil(fraction * len(sorted_values)))
    return float(sorted_values[rank - 1])


def duration_summary(durations: Sequence[float]) -> dict[str, float | int | None]:
    """Count, mean, p50/p90/p99 and max of call durations (seconds)."""
    ordered = sorted(durations)
    return {
        "count": len(ordered),
        "mean": round(sum(ordered) / len(ordered), 3) if ordered else None,
        "p50": percentile(ordered, 0.50),
        "p90": percentile(ordered, 0.90),
        "p99": percentile(ordered, 0.99),
        "max": ordered[-1] if ordered else None,
    }


def compute_statistics(store: SyncSessionStore) -> dict[str, Any]:
    """The statistics document: counts by status, live, resumes, durations, archive health."""
    events = store.events()
    return {
        "computed_at": utc_now().isoformat(),
        "live_sessions": store.live_count(),
        "status_counts": store.status_counts(),
        "resumes": events.get("resumes", 0),
        "snapshots_applied": events.get("snapshots_applied", 0),
        "archived": events.get("archived", 0),
        "archive_backlog": store.archive_backlog(),
        "archive_failures": events.get("archive_failures", 0),
        "sessions_expired": events.get("sessions_expired", 0),
        "last_sweep_us": events.get("last_sweep_us"),
        "call_duration_s": duration_summary(store.recent_durations()),
        "model_usage": ModelUsage.from_event_counters(events).model_dump(),
    }
