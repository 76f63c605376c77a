"""Bridge metrics: what one bridge process counts and measures, for `/stats` and `/metrics`.

`/metrics` is rendered by prometheus_client from a registry of its own per `BridgeMetrics`
(several bridges may share a process). Monotonic counts are counters, present at 0 from the
start; current values are gauges read at scrape time; latencies are histograms.
"""

from __future__ import annotations

from collections import Counter, deque
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from prometheus_client import CollectorRegistry, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from bridges.persist.persister import PersisterMetrics
from sessions.statistics import percentile
from sessions.usage import ModelUsage

LATENCY_BUCKETS_MS = (0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 50.0, 100.0, 250.0, 500.0, 1000.0)
RECENT_SAMPLES = 4096  # the window `/stats` takes its percentiles from
DIRECTIONS = ("to_model", "to_caller")
RATE_LIMIT_NAME_CHARS = 64

# What a bridge counts with `BridgeMetrics.count`, each `opus_bridge_<name>_total`.
BRIDGE_COUNTERS: dict[str, str] = {
    "calls_started": "Calls started afresh on this bridge.",
    "calls_ended": "Calls ended on this bridge.",
    "calls_failed": "Calls that could not start: the model never came up.",
    "calls_refused_full": "Calls refused because the bridge held MAX_CALLS.",
    "resumes": "Calls resumed on this bridge.",
    "handoffs": "Calls handed over (stored PAUSED) when they left this bridge.",
    "handoff_failures": "Hand-off writes that failed (the persister sends them later).",
    "handoff_unreplicated": "Hand-off writes fewer replicas than HANDOFF_REPLICAS acknowledged "
    "in time (the persister sends them again).",
    "resume_handoff_waits": "Resumes that waited for another bridge to hand the call over.",
    "resume_handoff_timeouts": "Resumes whose previous bridge never handed the call over.",
    "frames_in": "Caller audio frames relayed to the model.",
    "frames_out": "Model audio frames relayed to the caller.",
    "function_calls": "Function calls the model made.",
    "barge_ins": "Times the caller spoke over the bot.",
    "text_responses": "Model answers in text only (nothing to play).",
    "responses_failed": "Model responses that ended as failed.",
    "transcription_failures": "Caller transcriptions the model failed.",
    "errors": "Model audio that could not be decoded.",
    "protocol_errors": "Telephony messages that broke the protocol.",
    "ignored_messages": "AudioCodes messages of a type the bridge does not handle.",
    "refused_status_callbacks": "Twilio status callbacks refused for a bad signature.",
    "refused_upgrades_audiocodes": "AudioCodes WebSocket upgrades refused.",
    "refused_upgrades_twilio": "Twilio WebSocket upgrades refused.",
    "model_errors": "Error events from the model.",
    "model_refusals": "Calls hung up because the model refused to go on with them.",
    "model_failures": "Calls hung up because the model could not be reached again.",
    "model_reconnects": "Model connections re-established after a drop.",
    "model_rollovers": "Model sessions replaced by a new one before their deadline.",
} | {
    f"model_{kind}": f"Model usage billed: {kind.replace('_', ' ')}."
    for kind in ModelUsage.model_fields
}
# The shared session store's event counters, `opus_store_events_total{event=...}`.
STORE_EVENTS = ("resumes", "snapshots_applied", "snapshots_stale", "snapshots_stale_merged",
                "archived", "archive_failures", "sessions_expired")  # fmt: skip
PERSISTER_GAUGES = {
    "backlog": "Sessions waiting to be sent: pending plus in flight.",
    "dirty": "Sessions changed since they were last sent.",
    "live_sessions": "Live sessions the persister tracks.",
}
PERSISTER_COUNTERS = {
    "publish_failures": "Failed publishes of saves.",
    "dropped": "Saves dropped because PERSIST_MAX_PENDING was reached.",
}


class LatencyHistogram:
    """One latency series: its Prometheus histogram, and the recent samples `/stats` reads."""

    def __init__(self, series: Histogram) -> None:
        self.series = series
        self.recent: deque[float] = deque(maxlen=RECENT_SAMPLES)
        self.total = 0

    def observe(self, value_ms: float) -> None:
        """Record one latency, in ms."""
        self.series.observe(value_ms)
        self.recent.append(value_ms)
        self.total += 1

    def summary(self) -> dict[str, float | None]:
        """p50/p99/max of the recent window, in ms."""
        ordered = sorted(self.recent)
        return {
            "p50": percentile(ordered, 0.5),
            "p99": percentile(ordered, 0.99),
            "max": ordered[-1] if ordered else None,
        }


@dataclass(frozen=True)
class ProcessValues:
    """What `/metrics` reads of the bridge process at scrape time, besides `BridgeMetrics`."""

    live_calls: int
    persister: PersisterMetrics
    store_events: Mapping[str, int] | None = None  # None: the storage did not answer


@dataclass(eq=False)
class BridgeMetrics:
    """What one bridge process counts; read by `/stats` and `/metrics`."""

    counters: Counter[str] = field(default_factory=Counter)
    model_rate_limits: dict[str, int] = field(default_factory=dict)  # remaining, by limit name
    registry: CollectorRegistry = field(default_factory=CollectorRegistry, repr=False)
    relay_ms: dict[str, LatencyHistogram] = field(init=False, repr=False)
    loop_lag_ms: LatencyHistogram = field(init=False, repr=False)
    _scraped: ScrapedFamilies = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self._scraped = ScrapedFamilies(self)
        self.registry.register(self._scraped)
        relay = Histogram(
            "opus_bridge_relay_latency_ms",
            "Frame received (or model audio arrived) to frame forwarded, in ms.",
            ["direction"],
            buckets=LATENCY_BUCKETS_MS,
            registry=self.registry,
        )
        self.relay_ms = {d: LatencyHistogram(relay.labels(direction=d)) for d in DIRECTIONS}
        lag = Histogram(
            "opus_bridge_event_loop_lag_ms",
            "How late a 20 ms timer on the bridge's event loop fires, in ms.",
            buckets=LATENCY_BUCKETS_MS,
            registry=self.registry,
        )
        self.loop_lag_ms = LatencyHistogram(lag)

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

    def exposition(self, process: ProcessValues) -> bytes:
        """The Prometheus text of this bridge's registry, with `process` read into it."""
        self._scraped.process = process
        try:
            return generate_latest(self.registry)
        finally:
            self._scraped.process = None


class ScrapedFamilies(Collector):
    """The families whose values are read when `/metrics` is scraped."""

    def __init__(self, metrics: BridgeMetrics) -> None:
        self.metrics = metrics
        self.process: ProcessValues | None = None

    def collect(self) -> Iterator[Metric]:
        if self.process is not None:
            yield from process_families(self.process)
        yield from bridge_counters(self.metrics.counters)
        yield from rate_limits(self.metrics.model_rate_limits)


def bridge_counters(counts: Mapping[str, int]) -> Iterator[Metric]:
    """`opus_bridge_<name>_total` for every known counter (0 until counted) and any other."""
    for name in sorted(BRIDGE_COUNTERS.keys() | counts.keys()):
        help_text = BRIDGE_COUNTERS.get(name) or f"Count of {name.replace('_', ' ')}."
        yield CounterMetricFamily(f"opus_bridge_{name}", help_text, counts.get(name, 0))


def rate_limits(remaining: Mapping[str, int]) -> Iterator[Metric]:
    """What the model's last rate-limit report left, once it has sent one."""
    if not remaining:
        return
    family = GaugeMetricFamily(
        "opus_model_rate_limit_remaining",
        "What the model's last rate_limits.updated left, by limit.",
        labels=["name"],
    )
    for limit, value in sorted(remaining.items()):
        family.add_metric([limit[:RATE_LIMIT_NAME_CHARS]], value)
    yield family


def process_families(process: ProcessValues) -> Iterator[Metric]:
    """Live calls, the persister's numbers and (when it answered) the store's event counts."""
    yield GaugeMetricFamily(
        "opus_bridge_live_calls", "Calls connected to this bridge.", process.live_calls
    )
    for key, help_text in PERSISTER_GAUGES.items():
        yield GaugeMetricFamily(f"opus_persister_{key}", help_text, getattr(process.persister, key))
    for key, help_text in PERSISTER_COUNTERS.items():
        value = getattr(process.persister, key)
        yield CounterMetricFamily(f"opus_persister_{key}", help_text, value)
    if process.store_events is not None:
        yield store_events(process.store_events)


def store_events(counts: Mapping[str, int]) -> Metric:
    """`opus_store_events_total{event=...}`: every known event, 0 until it happened."""
    family = CounterMetricFamily(
        "opus_store_events",
        "Events of the shared session store (all bridges and workers), by event.",
        labels=["event"],
    )
    for event in STORE_EVENTS:
        family.add_metric([event], counts.get(event, 0))
    return family
