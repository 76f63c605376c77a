"""Telephony and model audio formats, negotiation, and streaming conversion between them."""

from __future__ import annotations

import array
import binascii
import sys
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal, get_args

from bridges.errors import ProtocolError, UnsupportedMediaFormat

with warnings.catch_warnings():
    warnings.simplefilter("ignore", DeprecationWarning)
    import audioop

MediaFormat = Literal["raw/lpcm16", "raw/lpcm16_8", "raw/lpcm16_24", "raw/mulaw"]
# The model's formats, by their GA `audio.*.format.type` names (PCM16 at 24 kHz, µ-law 8 kHz).
ModelAudioFormat = Literal["audio/pcm", "audio/pcmu"]
AudioFormat = MediaFormat | ModelAudioFormat

MEDIA_FORMATS: tuple[MediaFormat, ...] = (
    "raw/lpcm16_24",
    "raw/lpcm16",
    "raw/lpcm16_8",
    "raw/mulaw",
)
MODEL_AUDIO_FORMATS: tuple[ModelAudioFormat, ...] = get_args(ModelAudioFormat)
DEFAULT_MEDIA_FORMAT: MediaFormat = "raw/lpcm16"
TWILIO_ENCODING = "audio/x-mulaw"
TWILIO_RATE_HZ = 8000
MULAW_SILENCE = b"\xff"
SAMPLE_WIDTH = 2

RateCvState = tuple[int, tuple[tuple[int, int], ...]]
_ALIGNED_START: RateCvState = (-1, ((0, 0),))


@dataclass(frozen=True)
class Encoding:
    """How a format stores audio: sample rate and whether samples are µ-law bytes."""

    rate_hz: int
    mulaw: bool

    @property
    def bytes_per_sample(self) -> int:
        """Bytes one mono sample takes."""
        return 1 if self.mulaw else SAMPLE_WIDTH


ENCODINGS: dict[str, Encoding] = {
    "raw/lpcm16": Encoding(16_000, mulaw=False),
    "raw/lpcm16_8": Encoding(8_000, mulaw=False),
    "raw/lpcm16_24": Encoding(24_000, mulaw=False),
    "raw/mulaw": Encoding(8_000, mulaw=True),
    "audio/pcm": Encoding(24_000, mulaw=False),
    "audio/pcmu": Encoding(8_000, mulaw=True),
}
# What the model hears and speaks for each telephony format: µ-law passes through as
# `audio/pcmu`, 24 kHz PCM as `audio/pcm`; only the PCM rates the model does not take are
# resampled (to 24 kHz, never down to µ-law, which would lose quality).
MODEL_FORMAT_FOR: dict[MediaFormat, ModelAudioFormat] = {
    "raw/lpcm16_24": "audio/pcm",
    "raw/lpcm16": "audio/pcm",
    "raw/lpcm16_8": "audio/pcm",
    "raw/mulaw": "audio/pcmu",
}


def encoding_of(fmt: str) -> Encoding:
    """The encoding of a media or model format; ValueError for an unknown name."""
    try:
        return ENCODINGS[fmt]
    except KeyError:
        raise ValueError(f"unknown audio format {fmt!r}") from None


def to_base64(chunk: bytes) -> str:
    """Audio as base64 text (the C codec, no line break)."""
    return binascii.b2a_base64(chunk, newline=False).decode("ascii")


def from_base64(text: str) -> bytes:
    """Base64 text as audio, strictly (ValueError, or binascii.Error, when it is not base64)."""
    return binascii.a2b_base64(text, strict_mode=True)


def model_format_for(media_format: MediaFormat) -> ModelAudioFormat:
    """The model audio format a call in `media_format` uses (both ways)."""
    return MODEL_FORMAT_FOR[media_format]


def bytes_per_second(fmt: AudioFormat) -> int:
    """Bytes one second of mono audio in `fmt` takes."""
    enc = encoding_of(fmt)
    return enc.rate_hz * enc.bytes_per_sample


def sample_rate_hz(fmt: AudioFormat) -> int:
    """The sample rate of a media or model format."""
    return encoding_of(fmt).rate_hz


def frame_bytes(fmt: AudioFormat, duration_ms: int) -> int:
    """Bytes of `duration_ms` of mono audio in `fmt`."""
    enc = encoding_of(fmt)
    return enc.rate_hz * duration_ms // 1000 * enc.bytes_per_sample


def silence(fmt: AudioFormat, duration_ms: int) -> bytes:
    """`duration_ms` of silence in `fmt` (µ-law silence is 0xFF)."""
    size = frame_bytes(fmt, duration_ms)
    return MULAW_SILENCE * size if encoding_of(fmt).mulaw else bytes(size)


def negotiate(offered: Sequence[str]) -> MediaFormat:
    """The bridge's preferred format among `offered` (nothing offered means the default)."""
    if not offered:
        return DEFAULT_MEDIA_FORMAT
    for fmt in MEDIA_FORMATS:
        if fmt in offered:
            return fmt
    raise UnsupportedMediaFormat(
        f"none of the offered media formats {list(offered)!r} is supported "
        f"(supported: {', '.join(MEDIA_FORMATS)})"
    )


def media_format_from_twilio(encoding: str, rate_hz: int = TWILIO_RATE_HZ) -> MediaFormat:
    """The media format of a Twilio stream's `mediaFormat` (only µ-law 8 kHz exists)."""
    if encoding == TWILIO_ENCODING and rate_hz == TWILIO_RATE_HZ:
        return "raw/mulaw"
    raise UnsupportedMediaFormat(f"unsupported Twilio media format {encoding!r} at {rate_hz} Hz")


def pcm16_to_mulaw(pcm: bytes) -> bytes:
    """PCM16 samples as G.711 µ-law bytes."""
    return audioop.lin2ulaw(pcm, SAMPLE_WIDTH)


def mulaw_to_pcm16(ulaw: bytes) -> bytes:
    """G.711 µ-law bytes as PCM16 samples."""
    return audioop.ulaw2lin(ulaw, SAMPLE_WIDTH)


def pcm16_samples(pcm: bytes) -> array.array[int]:
    """PCM16 LE bytes as signed samples (a trailing odd byte is ignored)."""
    samples = array.array("h")
    samples.frombytes(pcm[: len(pcm) - len(pcm) % SAMPLE_WIDTH])
    if sys.byteorder == "big":
        samples.byteswap()
    return samples


def pcm16_bytes(samples: array.array[int]) -> bytes:
    """Signed samples as PCM16 LE bytes."""
    if sys.byteorder == "big":
        samples = array.array("h", samples)
        samples.byteswap()
    return samples.tobytes()


def peak_amplitude(pcm: bytes) -> int:
    """The largest absolute sample value of PCM16 audio."""
    return audioop.max(pcm, SAMPLE_WIDTH) if pcm else 0


class _Direction:
    """One conversion direction, with its own resampler state across chunks."""

    def __init__(self, source: Encoding, target: Encoding) -> None:
        self.source = source
        self.target = target
        self.identity = source == target
        self._state: RateCvState | None = _ALIGNED_START

    def convert(self, chunk: bytes) -> bytes:
        """Convert one chunk, continuing the resampler where the last chunk ended."""
        if self.source.mulaw:
            if self.identity:
                return chunk
            pcm = mulaw_to_pcm16(chunk)
        else:
            pcm = _checked_pcm(chunk)
            if self.identity:
                return pcm
        if self.source.rate_hz != self.target.rate_hz and pcm:
            pcm, self._state = self._resample(pcm)
        return pcm16_to_mulaw(pcm) if self.target.mulaw else pcm

    def _resample(self, pcm: bytes) -> tuple[bytes, RateCvState]:
        out: tuple[bytes, Any] = audioop.ratecv(
            pcm, SAMPLE_WIDTH, 1, self.source.rate_hz, self.target.rate_hz, self._state
        )
        return out[0], out[1]


def _checked_pcm(chunk: bytes) -> bytes:
    """`chunk` unchanged if it is whole PCM16 samples; ProtocolError otherwise."""
    if len(chunk) % SAMPLE_WIDTH:
        raise ProtocolError(f"PCM16 audio chunk has an odd length ({len(chunk)} bytes)")
    return chunk


class AudioConverter:
    """Streams audio between a telephony media format and the model's audio format."""

    def __init__(self, telephony: MediaFormat, model: ModelAudioFormat) -> None:
        self.telephony = telephony
        self.model = model
        self._up = _Direction(encoding_of(telephony), encoding_of(model))
        self._down = _Direction(encoding_of(model), encoding_of(telephony))

    @property
    def passthrough(self) -> bool:
        """True when both sides use the same encoding and chunks pass untouched."""
        return self._up.identity

    def to_model(self, chunk: bytes) -> bytes:
        """A telephony chunk in the model's format."""
        return self._up.convert(chunk)

    def from_model(self, chunk: bytes) -> bytes:
        """A model chunk in the telephony format."""
        return self._down.convert(chunk)
