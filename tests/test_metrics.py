"""`/metrics` of a real bridge server, read with prometheus_client's parser, against README.md."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import httpx
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY
from prometheus_client.metrics_core import Metric
from prometheus_client.parser import text_string_to_metric_families

from bridges.call.metrics import BridgeMetrics, ProcessValues
from bridges.call.runtime import BridgeRuntime
from bridges.hosting import hosted_bridge
from bridges.persist.persister import PersisterMetrics
from bridges.sim.server import RealtimeSimulator
from bridges.sim.telephony import AudioCodesClient
from sessions.settings import Settings
from tests.conftest import wait_until

README = Path(__file__).resolve().parent.parent / "README.md"
REPORTED_LATER = {"opus_model_rate_limit_remaining"}  # the README: once the model sent one
IDENTIFIER = re.compile(r"[a-z][a-z0-9_]*")
IDLE_PERSISTER = PersisterMetrics(
    live_sessions=0, dirty=0, backlog=0, batches_sent=0, snapshots_sent=0, ends_sent=0,
    publish_failures=0, dropped=0, publish_latency_ms={}, last_error=None,
)  # fmt: skip


# -- what README.md documents ---------------------------------------------------------------


def readme_section() -> str:
    text = README.read_text()
    section = text[text.index("Metrics on `/metrics`") :]
    return section[: section.index("\n## ")]


def ticked(cell: str) -> list[str]:
    return re.findall(r"`([^`]+)`", cell)


def readme_rows() -> Iterator[tuple[list[str], str, list[str], list[str]]]:
    """Each row of the metrics table: names, type, label values, the words its meaning lists."""
    for line in readme_section().splitlines():
        if line.startswith("| `opus_"):
            name_cell, type_cell, meaning_cell = line.strip("| ").split(" | ")
            listed = [w for w in ticked(meaning_cell) if IDENTIFIER.fullmatch(w)]
            label = ticked(type_cell)  # the label's name and its values (or in the meaning)
            values = label[1:] or (listed if label else [])
            yield ticked(name_cell), type_cell.split(",")[0], values, listed


def documented() -> dict[str, tuple[str, list[str]]]:
    """Each documented metric (templates filled in): its type and its label values."""
    found: dict[str, tuple[str, list[str]]] = {}
    for names, kind, labels, words in readme_rows():
        for name in names:
            filled = [re.sub(r"<\w+>", w, name) for w in words] if "<" in name else [name]
            for metric in filled:
                found[metric.removesuffix("_total")] = (kind, labels)
    return found


def documented_buckets() -> list[float]:
    match = re.search(r"buckets ((?:[\d.]+, )+[\d.]+) ms", readme_section().replace("\n", " "))
    assert match is not None, "README.md lists no histogram buckets"
    return [float(b) for b in match.group(1).split(", ")]


# -- what the bridge exposes ----------------------------------------------------------------


async def scrape(url: str) -> dict[str, Metric]:
    async with httpx.AsyncClient() as web:
        response = await web.get(url.replace("ws://", "http://") + "/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"] == CONTENT_TYPE_LATEST
    return parse(response.content)


def parse(exposition: bytes) -> dict[str, Metric]:
    return {f.name: f for f in text_string_to_metric_families(exposition.decode())}


def value(families: dict[str, Metric], sample: str, **labels: str) -> float:
    """The value of one sample (`opus_bridge_calls_started_total`, `..._count`, ...)."""
    found = [s.value for f in families.values() for s in f.samples
             if s.name == sample and s.labels == labels]  # fmt: skip
    assert len(found) == 1, f"{sample} {labels}: {found}"
    return found[0]


def label_values(family: Metric) -> set[str]:
    return {v for s in family.samples for k, v in s.labels.items() if k != "le"}


# -- the tests ------------------------------------------------------------------------------


async def test_every_documented_series_is_present_before_the_first_call(
    embedded: tuple[str, BridgeRuntime],
) -> None:
    families = await scrape(embedded[0])
    expected = {name: labels for name, (_, labels) in documented().items()}
    assert len(expected) > 40
    missing = [name for name in expected.keys() - REPORTED_LATER if name not in families]
    assert missing == []
    for name, labels in expected.items():
        if name not in REPORTED_LATER:
            assert label_values(families[name]) == set(labels), name


async def test_counts_are_counters_at_zero_and_current_values_are_gauges(
    embedded: tuple[str, BridgeRuntime],
) -> None:
    families = await scrape(embedded[0])
    for name, (kind, _) in documented().items():
        if name not in REPORTED_LATER:
            assert families[name].type == kind, name
    counters = [f for f in families.values() if f.type == "counter"]
    assert len(counters) > 40
    assert [(s.name, s.labels) for f in counters for s in f.samples if s.value != 0] == []
    assert all(s.name.endswith("_total") for f in counters for s in f.samples)


async def test_the_histograms_have_exactly_the_buckets_the_readme_lists(
    embedded: tuple[str, BridgeRuntime],
) -> None:
    families = await scrape(embedded[0])
    histograms = [f for f in families.values() if f.type == "histogram"]
    assert {f.name for f in histograms} == {
        "opus_bridge_relay_latency_ms",
        "opus_bridge_event_loop_lag_ms",
    }
    expected = [*documented_buckets(), float("inf")]
    for family in histograms:
        series: dict[tuple[tuple[str, str], ...], list[float]] = {}
        for sample in family.samples:
            if sample.name.endswith("_bucket"):
                key = tuple(sorted((k, v) for k, v in sample.labels.items() if k != "le"))
                series.setdefault(key, []).append(float(sample.labels["le"]))
        assert series and all(bounds == expected for bounds in series.values()), family.name


async def test_a_call_is_counted_and_timed_and_stats_agree(
    embedded: tuple[str, BridgeRuntime],
) -> None:
    url, runtime = embedded
    before = await scrape(url)
    client = AudioCodesClient(url, "metrics-call")
    await client.connect()
    await client.initiate()
    await client.expect("playStream.stop")
    during = await scrape(url)
    await client.hangup()
    await client.closed()
    await wait_until(lambda: _counted(runtime, "calls_ended"))
    await wait_until(lambda: _no_calls(runtime))
    after = await scrape(url)
    async with httpx.AsyncClient() as web:
        stats = (await web.get(url.replace("ws://", "http://") + "/stats")).json()
    assert value(before, "opus_bridge_calls_started_total") == 0
    assert value(during, "opus_bridge_live_calls") == 1
    assert value(after, "opus_bridge_live_calls") == 0
    assert value(after, "opus_bridge_calls_started_total") == 1
    assert value(after, "opus_bridge_calls_ended_total") == 1
    frames_out = value(after, "opus_bridge_frames_out_total")
    assert frames_out > 0 and frames_out == stats["counters"]["frames_out"]
    timed = value(after, "opus_bridge_relay_latency_ms_count", direction="to_caller")
    assert timed == frames_out
    assert value(after, "opus_bridge_model_responses_total") >= 1


async def test_the_store_counters_count_what_the_shared_store_did(
    redis_settings: Settings, sim: RealtimeSimulator
) -> None:
    runtime = BridgeRuntime.build(redis_settings, realtime_url=sim.url)
    async with hosted_bridge(runtime) as url:
        assert value(await scrape(url), "opus_store_events_total", event="archived") == 0
        client = AudioCodesClient(url, "metrics-archived")
        await client.connect()
        await client.initiate()
        await client.expect("playStream.stop")
        await client.hangup()
        await client.closed()
        await wait_until(lambda: _archived_counted(url), timeout_s=20)
        families = await scrape(url)
    assert value(families, "opus_store_events_total", event="archive_failures") == 0
    assert value(families, "opus_bridge_calls_ended_total") == 1


async def _counted(runtime: BridgeRuntime, counter: str) -> bool:
    return runtime.metrics.counters[counter] > 0


async def _no_calls(runtime: BridgeRuntime) -> bool:
    return runtime.calls == {}


async def _archived_counted(url: str) -> bool:
    return value(await scrape(url), "opus_store_events_total", event="archived") >= 1


def test_each_bridge_keeps_its_metrics_in_a_registry_of_its_own() -> None:
    first, second = BridgeMetrics(), BridgeMetrics()
    first.count("calls_started")
    first.relayed("to_model", 0.002)
    text = {m: m.exposition(ProcessValues(0, IDLE_PERSISTER)).decode() for m in (first, second)}
    assert "opus_bridge_calls_started_total 1.0" in text[first]
    assert "opus_bridge_calls_started_total 0.0" in text[second]
    assert 'opus_bridge_relay_latency_ms_count{direction="to_model"} 0.0' in text[second]
    assert not any(f.name.startswith("opus_") for f in REGISTRY.collect())


def test_rate_limits_are_shown_once_the_model_reports_them() -> None:
    metrics = BridgeMetrics()
    before = metrics.exposition(ProcessValues(0, IDLE_PERSISTER, {})).decode()
    metrics.model_rate_limits["tokens"] = 900
    families = parse(metrics.exposition(ProcessValues(0, IDLE_PERSISTER, {})))
    assert "opus_model_rate_limit_remaining" not in before
    assert families["opus_model_rate_limit_remaining"].type == "gauge"
    assert value(families, "opus_model_rate_limit_remaining", name="tokens") == 900


def test_store_counters_are_left_out_while_the_store_does_not_answer() -> None:
    metrics = BridgeMetrics()
    silent = parse(metrics.exposition(ProcessValues(0, IDLE_PERSISTER, None)))
    answered = parse(metrics.exposition(ProcessValues(0, IDLE_PERSISTER, {"archived": 2})))
    assert "opus_store_events" not in silent and "opus_bridge_calls_started" in silent
    assert value(answered, "opus_store_events_total", event="archived") == 2
    assert value(answered, "opus_store_events_total", event="resumes") == 0


def test_the_readme_lists_every_counter_the_bridge_counts() -> None:
    names = set(documented())
    exposed = parse(BridgeMetrics().exposition(ProcessValues(0, IDLE_PERSISTER, {})))
    assert {f for f in exposed if not f.endswith("_created")} - names == set()
