"""Hostile input, bounded and seeded: every message answered, no traceback, a healthy server.

AudioCodes messages are answered one `session.error` each on one connection; Twilio has no
error message, so each hostile event goes first on a fresh stream, which the bridge closes
with 1008 and a reason. Afterwards a normal call of each kind still goes through.
"""

from __future__ import annotations

import json
import logging
import random
import string
from collections.abc import Iterator
from typing import Any

import pytest
from pydantic import ValidationError

from bridges.call.runtime import BridgeRuntime
from bridges.sim.telephony import AudioCodesClient, TwilioClient
from bridges.telephony.twilio import Connected

SEED = 20261201
AUDIOCODES_MESSAGES = 600
TWILIO_EVENTS = 150
TYPES = [
    "session.initiate",
    "session.resume",
    "session.end",
    "userStream.start",
    "userStream.chunk",
    "userStream.stop",
    "activities",
    "connection.validate",
]
FRAME_LIMIT = 4096  # the `embedded` fixture's MAX_FRAME_BYTES: hostile, but under the limit
EVENTS = ["connected", "start", "media", "dtmf", "mark", "stop"]


def junk(rng: random.Random, depth: int = 0) -> Any:
    """A random JSON value, sometimes big, sometimes nested, sometimes odd unicode."""
    kind = rng.randrange(9 if depth < 3 else 6)
    if kind == 0:
        return None
    if kind == 1:
        return rng.choice([True, False, 0, -1, 2**63, 1e308, -0.0])
    if kind == 2:
        return "".join(rng.choice(string.printable) for _ in range(rng.randrange(40)))
    if kind == 3:
        return rng.choice(["\u0000", "\ud7ff\ue000", "\u202e", "💥" * 50, "../../etc", "%00"])
    if kind == 4:
        return "A" * rng.randrange(1, 3000)
    if kind == 5:
        return rng.randrange(-(10**6), 10**6)
    if kind == 6:
        return [junk(rng, depth + 1) for _ in range(rng.randrange(5))]
    return {
        rng.choice(["type", "conversationId", "x", "audioChunk", "activities"]): junk(
            rng, depth + 1
        )
        for _ in range(rng.randrange(5))
    }


def hostile_texts(rng: random.Random, kinds: list[str], key: str) -> Iterator[str]:
    """Text frames under the frame limit that no correct peer sends."""
    while True:
        shape = rng.randrange(7)
        if shape == 0:
            yield rng.choice("[{") * rng.randrange(2000, 3900)  # nested past any parser
        elif shape == 1:
            yield json.dumps({key: rng.choice(kinds), "x": json.loads("[" * 900 + "]" * 900)})
        elif shape == 2:
            yield "".join(rng.choice(string.printable) for _ in range(rng.randrange(1, 200)))
        elif shape == 3:
            yield json.dumps(junk(rng))
        elif shape == 4:
            message = {
                key: rng.choice(kinds),
                **{
                    f: junk(rng)
                    for f in (
                        "conversationId",
                        "streamSid",
                        "start",
                        "media",
                        "activities",
                        "audioChunk",
                    )
                },
            }
            yield json.dumps(message)
        elif shape == 5:
            yield json.dumps({key: junk(rng)})
        else:
            yield json.dumps([{key: rng.choice(kinds)}])


@pytest.fixture
def no_tracebacks(caplog: pytest.LogCaptureFixture) -> Iterator[None]:
    caplog.set_level(logging.WARNING)
    yield
    crashed = [r for r in caplog.records if r.exc_info or "Exception in ASGI" in r.getMessage()]
    assert crashed == [], [r.getMessage() for r in crashed[:3]]


async def test_hostile_audiocodes_messages_are_each_answered(
    embedded: tuple[str, BridgeRuntime], no_tracebacks: None
) -> None:
    url, runtime = embedded
    rng = random.Random(SEED)
    client = AudioCodesClient(url, "fuzz")
    await client.connect()
    texts = hostile_texts(rng, TYPES, "type")
    sent = 0
    for text in texts:
        if sent == AUDIOCODES_MESSAGES:
            break
        if _not_hostile(text) or len(text.encode()) > FRAME_LIMIT:
            continue
        await client.send_raw(text)
        sent += 1
        await client.expect("session.error")
    assert client.close_code is None and runtime.calls == {}
    await _a_normal_call_works(url, runtime)


def _not_hostile(text: str) -> bool:
    """What the Bot API allows: a call's valid start, or a type this bridge does not know
    (ignored by design, and so not answered)."""
    data = _object(text)
    if data is None or not isinstance(data.get("type"), str):
        return False
    if data["type"] not in TYPES:
        return True
    cid = data.get("conversationId")
    return data["type"] in TYPES[:2] and isinstance(cid, str) and bool(cid)


def _twilio_allows(text: str) -> bool:
    """A `connected` event with fields of the right types is what Twilio sends first."""
    data = _object(text)
    if data is None or data.get("event") != "connected":
        return False
    try:
        Connected.model_validate(data)
    except ValidationError:
        return False
    return True


def _object(text: str) -> dict[str, Any] | None:
    try:
        data = json.loads(text)
    except (ValueError, RecursionError):
        return None
    return data if isinstance(data, dict) else None


async def test_hostile_twilio_events_close_each_stream_with_a_reason(
    embedded: tuple[str, BridgeRuntime], no_tracebacks: None
) -> None:
    url, runtime = embedded
    rng = random.Random(SEED + 1)
    texts = hostile_texts(rng, EVENTS, "event")
    for index in range(TWILIO_EVENTS):
        text = next(texts)
        while _twilio_allows(text) or len(text.encode()) > FRAME_LIMIT:
            text = next(texts)
        stream = TwilioClient(url, f"CA{index:032x}", "MZ1")
        await stream.connect()
        await stream.send_raw(text)
        assert await stream.closed() == 1008 and stream.close_reason
    assert runtime.calls == {} and runtime.metrics.counters["protocol_errors"] >= TWILIO_EVENTS
    await _a_normal_call_works(url, runtime)


async def _a_normal_call_works(url: str, runtime: BridgeRuntime) -> None:
    caller = AudioCodesClient(url, "after-fuzz")
    await caller.connect()
    assert (await caller.initiate())["type"] == "session.accepted"
    await caller.expect("playStream.stop")
    await caller.say("12")
    await caller.expect(lambda m: m.get("type") == "playStream.stop" and m["streamId"] == "2")
    await caller.hangup()
    assert await caller.closed() == 1000
    stream = TwilioClient(url, "CA" + "f" * 32, "MZ9")
    await stream.connect()
    await stream.start()
    await stream.expect("mark")
    await stream.stop()
    assert await stream.closed() == 1000
