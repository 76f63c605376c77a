"""The realtime client's reconnect against the strict simulator: retried with backoff while
the model is unavailable, never retried once it refuses the session."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
from tenacity import RetryCallState

from bridges.errors import ModelRefused
from bridges.model import RealtimeClient, RealtimeConfig, history_items
from bridges.model.client import MAX_BACKOFF_S, log
from bridges.model.reconnect import reconnect_policy
from bridges.sim.server import RealtimeSimulator
from tests.test_realtime import HISTORY, Recorder

INVALID_KEY = {
    "type": "invalid_request_error",
    "code": "invalid_api_key",
    "message": "Incorrect API key provided: sk-abc********wxyz.",
    "param": None,
}


class Retries(logging.Handler):
    """Sets `seen` once the client logs that it will try reconnecting again."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.seen = asyncio.Event()

    def emit(self, record: logging.LogRecord) -> None:
        if record.getMessage().startswith("Retrying"):
            self.seen.set()


@pytest.fixture
async def sim() -> AsyncIterator[RealtimeSimulator]:
    async with RealtimeSimulator() as simulator:
        yield simulator
        assert simulator.violations() == [], "the client sent events the GA protocol refuses"


def history() -> list[dict[str, Any]]:
    return history_items(HISTORY, [])


@pytest.fixture
def recorder() -> Recorder:
    return Recorder()


@pytest.fixture
def retries() -> Iterator[Retries]:
    handler = Retries()
    log.addHandler(handler)
    yield handler
    log.removeHandler(handler)


async def test_a_refused_reconnect_is_not_retried(
    sim: RealtimeSimulator, recorder: Recorder, caplog: pytest.LogCaptureFixture
) -> None:
    client = RealtimeClient(RealtimeConfig(url=sim.url), recorder, backoff_s=0.01)
    async with client:
        sim.setup_error = INVALID_KEY
        await sim.drop_connections()
        failed = await recorder.wait("client.failed")
        assert failed["refused"] is True and failed["setting"] == "OPENAI_API_KEY"
        with pytest.raises(ModelRefused):
            await client.send({"type": "response.create"})
    assert len(sim.connections) == 2  # the first session and the one refused reconnect
    assert client.reconnects == 0 and not recorder.of("client.reconnected")
    assert "Retrying" not in caplog.text


async def test_a_refused_reconnect_handshake_is_not_retried(
    sim: RealtimeSimulator, recorder: Recorder, caplog: pytest.LogCaptureFixture
) -> None:
    client = RealtimeClient(RealtimeConfig(url=sim.url, api_key="sk-old"), recorder, backoff_s=0.01)
    async with client:
        sim.api_key = "sk-rotated"
        await sim.drop_connections()
        failed = await recorder.wait("client.failed")
    assert failed["refused"] is True and "HTTP 401" in failed["error"]
    refusals = [r for r in caplog.records if r.levelno == logging.ERROR and "401" in r.message]
    assert len(refusals) == 1 and "Retrying" not in caplog.text
    assert len(sim.connections) == 1


async def test_an_unavailable_model_is_retried_with_backoff_until_it_is_back(
    sim: RealtimeSimulator, recorder: Recorder, retries: Retries
) -> None:
    client = RealtimeClient(RealtimeConfig(url=sim.url), recorder, history, backoff_s=0.3)
    async with client:
        await sim.stop()  # the first reconnect finds nothing listening
        await asyncio.wait_for(retries.seen.wait(), 5)
        assert not recorder.of("client.reconnected") and client.connected is False
        await sim.start()  # on the same port, before the next try
        reconnected = await recorder.wait("client.reconnected", timeout_s=10)
        assert not recorder.of("client.failed")
    items = len(history())
    assert reconnected["replayed"] == items and client.reconnects == 1
    assert len(sim.connections) == 2 and len(sim.connections[1].items) == items


async def test_closing_the_client_while_it_waits_to_reconnect_stops_the_tries(
    sim: RealtimeSimulator, recorder: Recorder, retries: Retries
) -> None:
    client = RealtimeClient(RealtimeConfig(url=sim.url), recorder, backoff_s=0.3)
    await client.connect()
    await sim.stop()
    await asyncio.wait_for(retries.seen.wait(), 5)
    await client.close()
    assert not [t for t in asyncio.all_tasks() if t.get_name().startswith("realtime-")]
    assert not recorder.of("client.failed") and not recorder.of("client.reconnected")
    assert client.reconnects == 0 and len(sim.connections) == 1


def test_reconnect_tries_wait_backoff_doubling_up_to_the_cap_and_stop_after_the_attempts() -> None:
    policy = reconnect_policy(7, 0.2, MAX_BACKOFF_S, log)
    tries = RetryCallState(policy, None, (), {})
    delays, stops = [], []
    for attempt in range(1, 8):
        tries.attempt_number = attempt
        delays.append(round(policy.wait(tries), 6))
        stops.append(policy.stop(tries))
    assert delays[:6] == [0.2, 0.4, 0.8, 1.6, 3.2, MAX_BACKOFF_S]
    assert stops == [False] * 6 + [True]
