"""Bridge metrics: counters, a relay-latency histogram, and their Prometheus text form."""

from __future__ import annotations

import bisect
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from sessions.statistics import percentile

LATENCY_BUCKETS_MS = (0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 50.0, 100.0, 250.0, 500.0, 1000.0)
RECENT_SAMPLES = 4096


@dataclass
class LatencyHistogram:
    """Cumulative Prometheus buckets plus a window of recent samples for percentiles."""

    counts: list[int] = field(default_factory=lambda: [0] * (len(LATENCY_BUCKETS_MS) + 1))
    total: int = 0
    sum_ms: float = 0.0
    recent: deque[float] = field(default_factory=lambda: deque(maxlen=RECENT_SAMPLES))

    def observe(self, value_ms: float) -> None:
        """Record one latency."""
        self.counts[bisect.bisect_left(LATENCY_BUCKETS_MS, value_ms)] += 1
        self.total += 1
        self.sum_ms += value_ms
        self.recent.append(value_ms)

    def summary(self) -> dict[str, float | None]:
        """p50/p99/max of the recent window, in ms."""
        ordered = sorted(self.recent)
        return {
            "p50": percentile(ordered, 0.5),
            "p99": percentile(ordered, 0.99),
            "max": ordered[-1] if ordered else None,
        }


@dataclass
class BridgeMetrics:
    """What one bridge process counts; read by `/stats` and `/metrics`."""

    counters: Counter[str] = field(default_factory=Counter)
    relay_ms: dict[str, LatencyHistogram] = field(
        default_factory=lambda: {"to_model": LatencyHistogram(), "to_caller": LatencyHistogram()}
    )
    loop_lag_ms: LatencyHistogram = field(default_factory=LatencyHistogram)
    model_rate_limits: dict[str, int] = field(default_factory=dict)  # remaining, by limit name

    def count(self, name: str, amount: int = 1) -> None:
        """Add to a counter (calls_started, frames_in, frames_out, resumes, errors, ...)."""
        self.counters[name] += amount

    def relayed(self, direction: str, elapsed_s: float) -> None:
        """Record a frame relayed in `direction` (to_model or to_caller)."""
        self.relay_ms[direction].observe(elapsed_s * 1000)

    def snapshot(self, live_calls: int, persister: dict[str, Any]) -> dict[str, Any]:
        """A JSON view for `/stats`."""
        return {
            "live_calls": live_calls,
            "counters": dict(self.counters),
            "relay_latency_ms": {k: h.summary() for k, h in self.relay_ms.items()},
            "event_loop_lag_ms": self.loop_lag_ms.summary(),
            "model_rate_limits_remaining": dict(self.model_rate_limits),
            "persister": persister,
        }


# The storage's event counters shown on every bridge's /metrics (what workers and other
# instances did to the shared sessions), each present from the start.
STORE_EVENTS = ("resumes", "snapshots_applied", "snapshots_stale", "snapshots_stale_merged",
                "archived", "archive_failures", "sessions_expired")  # fmt: skip


def prometheus_text(
    metrics: BridgeMetrics,
    live_calls: int,
    persister: dict[str, Any],
    store_events: dict[str, int] | None = None,
) -> str:
    """The Prometheus exposition text of the bridge's metrics."""
    lines: list[str] = []
    add = _writer(lines)
    add("opus_bridge_live_calls", "gauge", "Calls connected to this bridge.", live_calls)
    if store_events is not None:
        name = "opus_store_events_total"
        lines += [f"# HELP {name} Events of the shared session store, by event.",
                  f"# TYPE {name} counter"]  # fmt: skip
        for event in STORE_EVENTS:
            lines.append(f'{name}{{event="{event}"}} {store_events.get(event, 0)}')
    for name, value in sorted(metrics.counters.items()):
        add(f"opus_bridge_{name}_total", "counter", f"Count of {name.replace('_', ' ')}.", value)
    _histogram(lines, "opus_bridge_relay_latency_ms",
               "Frame in (or model event arrived) to frame forwarded, in ms.",
               {f'direction="{d}"': h for d, h in metrics.relay_ms.items()})  # fmt: skip
    _histogram(lines, "opus_bridge_event_loop_lag_ms",
               "How late a 20 ms timer on the bridge's event loop fires, in ms.",
               {"": metrics.loop_lag_ms})  # fmt: skip
    if metrics.model_rate_limits:
        name = "opus_model_rate_limit_remaining"
        help_text = "What the model's last rate_limits.updated left, by limit."
        lines += [f"# HELP {name} {help_text}", f"# TYPE {name} gauge"]
        for limit, remaining in sorted(metrics.model_rate_limits.items()):
            lines.append(f'opus_model_rate_limit_remaining{{name="{_label(limit)}"}} {remaining}')
    for key in ("backlog", "dirty", "live_sessions", "publish_failures", "dropped"):
        if isinstance(persister.get(key), int):
            add(
                f"opus_persister_{key}",
                "gauge",
                f"Persister {key.replace('_', ' ')}.",
                persister[key],
            )
    return "\n".join(lines) + "\n"


def _histogram(
    lines: list[str], name: str, help_text: str, series: dict[str, LatencyHistogram]
) -> None:
    lines += [f"# HELP {name} {help_text}", f"# TYPE {name} histogram"]
    for label, hist in series.items():
        prefix = f"{label}," if label else ""
        running = 0
        for bound, count in zip([*LATENCY_BUCKETS_MS, float("inf")], hist.counts, strict=True):
            running += count
            le = "+Inf" if bound == float("inf") else f"{bound:g}"
            lines.append(f'{name}_bucket{{{prefix}le="{le}"}} {running}')
        labels = f"{{{label}}}" if label else ""
        lines.append(f"{name}_sum{labels} {hist.sum_ms:.3f}")
        lines.append(f"{name}_count{labels} {hist.total}")


def _label(value: str) -> str:
    """A label value with Prometheus's escapes."""
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")[:64]


def _writer(lines: list[str]) -> Callable[[str, str, str, float], None]:
    def add(name: str, kind: str, help_text: str, value: float) -> None:
        lines.extend([f"# HELP {name} {help_text}", f"# TYPE {name} {kind}", f"{name} {value}"])

    return add
