"""Deterministic "speech": digits as 60 ms constant-amplitude segments that survive conversion.

The digit d is a segment of amplitude (d + 1) * 2500 and a space is a segment of silence, so
an utterance can be told apart from another after resampling and µ-law coding.
"""

from __future__ import annotations

import array
import math
import statistics

from bridges.audio import (
    MediaFormat,
    encoding_of,
    frame_bytes,
    pcm16_bytes,
    pcm16_samples,
    pcm16_to_mulaw,
    silence,
)

SEGMENT_MS = 60
AMPLITUDE_STEP = 2500
SILENCE_THRESHOLD = AMPLITUDE_STEP // 2
TRAILING_SILENCE_MS = 600
DIGITS = "0123456789"
TONE_AMPLITUDE = 6000


def segment_samples(rate_hz: int) -> int:
    """Samples in one 60 ms symbol at `rate_hz`."""
    return rate_hz * SEGMENT_MS // 1000


def synthesize(text: str, rate_hz: int = 24_000) -> bytes:
    """PCM16 LE mono speech for `text` (digits and spaces only)."""
    samples = array.array("h")
    length = segment_samples(rate_hz)
    for symbol in text:
        samples.extend([_amplitude(symbol)] * length)
    return pcm16_bytes(samples)


def transcribe(pcm: bytes, rate_hz: int = 24_000) -> str:
    """The digits spoken in PCM16 LE mono audio (silences and leading/trailing padding dropped)."""
    samples = pcm16_samples(pcm)
    start = _first_voiced(samples)
    if start is None:
        return ""
    length = segment_samples(rate_hz)
    digits = []
    for offset in range(start, len(samples) - length * 3 // 4 + 1, length):
        digit = _segment_digit(samples[offset + length // 4 : offset + length * 3 // 4])
        if digit is not None:
            digits.append(digit)
    return "".join(digits)


def speech_frames(text: str, fmt: MediaFormat, frame_ms: int = 20) -> list[bytes]:
    """`text` as telephony frames in `fmt`, followed by ~600 ms of silence frames."""
    enc = encoding_of(fmt)
    pcm = synthesize(text, enc.rate_hz)
    audio = pcm16_to_mulaw(pcm) if enc.mulaw else pcm
    size = frame_bytes(fmt, frame_ms)
    audio += silence(fmt, frame_ms)[: -len(audio) % size]
    frames = [audio[i : i + size] for i in range(0, len(audio), size)]
    frames += [silence(fmt, frame_ms)] * -(-TRAILING_SILENCE_MS // frame_ms)
    return frames


def digits_of(text: str) -> str:
    """Only the digits of `text`."""
    return "".join(c for c in text if c in DIGITS)


def _amplitude(symbol: str) -> int:
    if symbol == " ":
        return 0
    if symbol in DIGITS:
        return (int(symbol) + 1) * AMPLITUDE_STEP
    raise ValueError(f"speech can only say digits and spaces, not {symbol!r}")


def _segment_digit(middle: array.array[int]) -> str | None:
    if not middle:
        return None
    level = statistics.median(abs(s) for s in middle)
    if level < SILENCE_THRESHOLD:
        return None
    return str(min(9, max(0, round(level / AMPLITUDE_STEP) - 1)))


def _first_voiced(samples: array.array[int]) -> int | None:
    for index, sample in enumerate(samples):
        if abs(sample) >= SILENCE_THRESHOLD:
            return index
    return None


def tone(rate_hz: int = 24_000, duration_ms: int = 300, frequency_hz: int = 440) -> bytes:
    """A short sine tone (PCM16 LE mono), for replies that contain no digits."""
    count = rate_hz * duration_ms // 1000
    step = 2 * math.pi * frequency_hz / rate_hz
    samples = array.array("h", (round(TONE_AMPLITUDE * math.sin(i * step)) for i in range(count)))
    return pcm16_bytes(samples)


def utterance_audio(text: str, rate_hz: int = 24_000) -> bytes:
    """The digits of `text` as speech, or a short tone when it has none (PCM16 LE mono)."""
    digits = digits_of(text)
    return synthesize(digits, rate_hz) if digits else tone(rate_hz)
