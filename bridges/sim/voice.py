"""The simulator's input audio: the buffer in the session's input format, and its server VAD."""

from __future__ import annotations

from typing import Any

from bridges.audio import encoding_of, mulaw_to_pcm16
from bridges.call.vad import EnergyVad, VadKind
from bridges.sim.conversation import AS_MEDIA, PREFIX_PADDING_MS, format_type
from bridges.sim.strict import Violation

VAD_THRESHOLD = 500


class InputAudio:
    """Appended audio as PCM16 at the input format's rate, and speech found in it."""

    def __init__(self, config: dict[str, Any], silence_ms: int) -> None:
        self.default_silence_ms = silence_ms
        self.format = ""
        self.buffer = bytearray()
        self.speech_item: str | None = None
        self.vad = EnergyVad(24_000, threshold=VAD_THRESHOLD, silence_ms=silence_ms)
        self._detection: dict[str, Any] | None = None
        self.configure(config)

    @property
    def rate_hz(self) -> int:
        return self.vad.rate_hz

    def configure(self, config: dict[str, Any]) -> None:
        """Follow the session's input format and turn detection."""
        audio_in = config["audio"]["input"]
        self._detection = audio_in.get("turn_detection")
        fmt = format_type(audio_in.get("format"))
        if fmt != self.format:
            self.format = fmt
            rate_hz = encoding_of(AS_MEDIA.get(fmt, "raw/lpcm16_24")).rate_hz
            self.vad = EnergyVad(rate_hz, threshold=VAD_THRESHOLD)
            self.take()
        silence = (self._detection or {}).get("silence_duration_ms")
        self.vad.silence_ms = int(silence or self.default_silence_ms)

    def detection(self) -> dict[str, Any]:
        """The turn detection in force ({} when it is off)."""
        return self._detection or {}

    def append(self, data: bytes) -> list[tuple[VadKind, int]]:
        """Buffer one chunk; the (speech_started / speech_stopped, ms) the server VAD found."""
        if self.format == "audio/pcm":
            if len(data) % 2:
                raise Violation("invalid_value", "PCM16 audio must be whole samples", "audio")
            pcm = data
        elif self.format == "audio/pcmu":
            pcm = mulaw_to_pcm16(data)
        else:
            raise Violation(
                "invalid_value",
                f"the simulator does not decode {self.format}",
                "session.audio.input.format",
            )
        self.buffer += pcm
        if self._detection is None:
            return []
        found = [(event.kind, event.at_ms) for event in self.vad.feed(pcm)]
        if not self.vad.speaking and not found:  # a turn that just ended is committed first
            del self.buffer[: -PREFIX_PADDING_MS * self.rate_hz // 1000 * 2]
        return found

    def take(self) -> tuple[bytes, int]:
        """The buffered audio (cleared) and its rate."""
        pcm = bytes(self.buffer)
        self.buffer.clear()
        self.speech_item = None
        self.vad.reset()
        return pcm, self.rate_hz
