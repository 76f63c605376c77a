"""Media formats, negotiation, streaming conversion, and the deterministic test speech."""

from __future__ import annotations

import array
import math

import pytest

from bridges.audio import (
    MEDIA_FORMATS,
    MODEL_AUDIO_FORMATS,
    AudioConverter,
    MediaFormat,
    ModelAudioFormat,
    encoding_of,
    frame_bytes,
    media_format_from_twilio,
    mulaw_to_pcm16,
    negotiate,
    pcm16_bytes,
    pcm16_samples,
    pcm16_to_mulaw,
    silence,
)
from bridges.call.vad import EnergyVad
from bridges.errors import ProtocolError, UnsupportedMediaFormat
from bridges.sim.speech import speech_frames, synthesize, transcribe

TONE_AMPLITUDE = 10_000
PAIRS = [(fmt, model) for fmt in MEDIA_FORMATS for model in MODEL_AUDIO_FORMATS]


def tone_pcm(rate_hz: int, duration_ms: int, frequency_hz: int = 440) -> bytes:
    """A sine at TONE_AMPLITUDE as PCM16 LE."""
    count = rate_hz * duration_ms // 1000
    step = 2 * math.pi * frequency_hz / rate_hz
    return pcm16_bytes(
        array.array("h", (round(TONE_AMPLITUDE * math.sin(i * step)) for i in range(count)))
    )


def encode(fmt: MediaFormat | ModelAudioFormat, pcm: bytes) -> bytes:
    """PCM16 at the format's rate, in the format's encoding."""
    return pcm16_to_mulaw(pcm) if encoding_of(fmt).mulaw else pcm


def decode(fmt: MediaFormat | ModelAudioFormat, data: bytes) -> bytes:
    """Audio in a format as PCM16 at its rate."""
    return mulaw_to_pcm16(data) if encoding_of(fmt).mulaw else data


def frames_of(fmt: MediaFormat | ModelAudioFormat, data: bytes, frame_ms: int = 20) -> list[bytes]:
    """`data` cut into frames of `frame_ms`."""
    size = frame_bytes(fmt, frame_ms)
    return [data[i : i + size] for i in range(0, len(data), size)]


def steady_peak(pcm: bytes) -> int:
    """The peak of the middle half of a signal (away from resampler edges)."""
    samples = pcm16_samples(pcm)
    quarter = len(samples) // 4
    return max(abs(s) for s in samples[quarter : 3 * quarter])


@pytest.mark.parametrize(("telephony", "model"), PAIRS)
def test_a_tone_survives_the_round_trip_with_its_amplitude_and_length(
    telephony: MediaFormat, model: ModelAudioFormat
) -> None:
    converter = AudioConverter(telephony, model)
    rate_hz = encoding_of(telephony).rate_hz
    sent = encode(telephony, tone_pcm(rate_hz, 400))
    to_model = b"".join(converter.to_model(f) for f in frames_of(telephony, sent))
    assert len(to_model) == frame_bytes(model, 400)
    back = b"".join(converter.from_model(f) for f in frames_of(model, to_model))
    assert len(back) == len(sent)
    assert steady_peak(decode(telephony, back)) == pytest.approx(TONE_AMPLITUDE, rel=0.05)
    assert steady_peak(decode(model, to_model)) == pytest.approx(TONE_AMPLITUDE, rel=0.05)


@pytest.mark.parametrize(
    ("telephony", "samples"), [("raw/lpcm16_8", 160), ("raw/lpcm16", 320), ("raw/mulaw", 160)]
)
def test_every_20_ms_frame_resamples_to_exactly_480_samples_and_back(
    telephony: MediaFormat, samples: int
) -> None:
    converter = AudioConverter(telephony, "audio/pcm")
    width = encoding_of(telephony).bytes_per_sample
    sent = frames_of(telephony, encode(telephony, tone_pcm(encoding_of(telephony).rate_hz, 200)))
    assert {len(f) for f in sent} == {samples * width}
    model_frames = [converter.to_model(f) for f in sent]
    assert {len(f) for f in model_frames} == {480 * 2}
    assert {len(converter.from_model(f)) for f in model_frames} == {samples * width}


def test_identical_formats_pass_chunks_through_as_the_same_object() -> None:
    for telephony, model in [("raw/lpcm16_24", "audio/pcm"), ("raw/mulaw", "audio/pcmu")]:
        converter = AudioConverter(telephony, model)  # type: ignore[arg-type]
        chunk = bytes(range(160)) * 2
        assert converter.passthrough
        assert converter.to_model(chunk) is chunk
        assert converter.from_model(chunk) is chunk


def test_an_odd_length_pcm16_chunk_is_a_protocol_error() -> None:
    with pytest.raises(ProtocolError, match="odd length"):
        AudioConverter("raw/lpcm16", "audio/pcm").to_model(b"\x00\x01\x02")
    with pytest.raises(ProtocolError):
        AudioConverter("raw/mulaw", "audio/pcm").from_model(b"\x00")
    with pytest.raises(ProtocolError):
        AudioConverter("raw/lpcm16_24", "audio/pcm").to_model(b"\x00")


def test_negotiation_prefers_24k_then_16k_then_8k_then_mulaw() -> None:
    assert negotiate(["raw/mulaw", "raw/lpcm16", "raw/lpcm16_24"]) == "raw/lpcm16_24"
    assert negotiate(["raw/lpcm16_8", "raw/lpcm16"]) == "raw/lpcm16"
    assert negotiate(["raw/mulaw", "raw/lpcm16_8"]) == "raw/lpcm16_8"
    assert negotiate(["audio/opus", "raw/mulaw"]) == "raw/mulaw"
    assert negotiate([]) == "raw/lpcm16"


def test_negotiation_with_nothing_usable_names_what_was_offered() -> None:
    with pytest.raises(UnsupportedMediaFormat, match="audio/opus"):
        negotiate(["audio/opus", "raw/alaw"])


def test_twilio_mulaw_at_8k_is_raw_mulaw() -> None:
    assert media_format_from_twilio("audio/x-mulaw", 8000) == "raw/mulaw"
    with pytest.raises(UnsupportedMediaFormat):
        media_format_from_twilio("audio/x-mulaw", 16000)


def test_frame_sizes_and_silence() -> None:
    assert frame_bytes("raw/lpcm16", 20) == 640
    assert frame_bytes("raw/lpcm16_8", 20) == 320
    assert frame_bytes("raw/lpcm16_24", 20) == 960
    assert frame_bytes("raw/mulaw", 20) == 160
    assert frame_bytes("audio/pcmu", 100) == 800
    assert silence("raw/mulaw", 20) == b"\xff" * 160
    assert silence("raw/lpcm16", 20) == bytes(640)
    assert mulaw_to_pcm16(silence("audio/pcmu", 20)) == bytes(320)


def test_speech_is_transcribed_from_its_own_audio_at_every_rate() -> None:
    for rate_hz in (8000, 16000, 24000):
        assert transcribe(synthesize("0123456789", rate_hz), rate_hz) == "0123456789"
    assert transcribe(synthesize("1 22  3")) == "1223"
    assert transcribe(bytes(4800)) == ""
    with pytest.raises(ValueError, match="digits"):
        synthesize("12a")


@pytest.mark.parametrize(("telephony", "model"), PAIRS)
@pytest.mark.parametrize("lead_ms", [0, 7, 130])
def test_speech_survives_every_media_format_both_ways(
    telephony: MediaFormat, model: ModelAudioFormat, lead_ms: int
) -> None:
    text = "9081 7 00"
    converter = AudioConverter(telephony, model)
    frames = [silence(telephony, lead_ms), *speech_frames(text, telephony)]
    at_model = b"".join(converter.to_model(f) for f in frames)
    model_rate_hz = encoding_of(model).rate_hz
    assert transcribe(decode(model, at_model), model_rate_hz) == "9081700"
    back = b"".join(converter.from_model(f) for f in frames_of(model, at_model))
    telephony_rate_hz = encoding_of(telephony).rate_hz
    assert transcribe(decode(telephony, back), telephony_rate_hz) == "9081700"


def test_speech_frames_are_whole_frames_ending_in_silence() -> None:
    frames = speech_frames("12", "raw/mulaw")
    assert {len(f) for f in frames} == {160}
    assert frames[-30:] == [b"\xff" * 160] * 30
    assert len(frames) == 6 + 30


def test_the_energy_vad_finds_the_start_and_the_end_of_speech() -> None:
    vad = EnergyVad(24_000, silence_ms=300)
    audio = silence("raw/lpcm16_24", 100) + synthesize("12") + silence("raw/lpcm16_24", 400)
    events = [e for f in frames_of("raw/lpcm16_24", audio) for e in vad.feed(f)]
    assert [(e.kind, e.at_ms) for e in events] == [
        ("speech_started", 100),
        ("speech_stopped", 220),
    ]
    assert not vad.speaking
