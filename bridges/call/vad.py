"""Voice activity detection: the model's server VAD (default) or a local energy VAD."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from bridges.audio import ModelAudioFormat, encoding_of, mulaw_to_pcm16, pcm16_samples

VadMode = Literal["server", "local"]
VadKind = Literal["speech_started", "speech_stopped"]


@dataclass(frozen=True)
class VadEvent:
    """Speech started or stopped at a sample index counted from the stream's start."""

    kind: VadKind
    sample: int
    rate_hz: int

    @property
    def at_ms(self) -> int:
        """The event's time in the stream."""
        return self.sample * 1000 // self.rate_hz


class EnergyVad:
    """Speech starts at the first sample above `threshold` and stops after `silence_ms` quiet."""

    def __init__(self, rate_hz: int = 24_000, *, threshold: int = 500, silence_ms: int = 300):
        self.rate_hz = rate_hz
        self.threshold = threshold
        self.silence_ms = silence_ms
        self.speaking = False
        self.samples_seen = 0
        self._quiet_samples = 0

    def feed(self, pcm: bytes) -> list[VadEvent]:
        """The speech starts and stops within the next chunk of PCM16 LE audio."""
        samples = pcm16_samples(pcm)
        loud = [i for i, s in enumerate(samples) if abs(s) > self.threshold]
        events = []
        if not self.speaking and loud:
            self.speaking = True
            self._quiet_samples = 0
            events.append(self._event("speech_started", self.samples_seen + loud[0]))
        self.samples_seen += len(samples)
        if not self.speaking:
            return events
        self._quiet_samples = (
            len(samples) - 1 - loud[-1] if loud else self._quiet_samples + len(samples)
        )
        if self._quiet_samples * 1000 >= self.silence_ms * self.rate_hz:
            self.speaking = False
            events.append(self._event("speech_stopped", self.samples_seen - self._quiet_samples))
        return events

    def reset(self) -> None:
        """Forget a speech in progress."""
        self.speaking = False
        self._quiet_samples = 0

    def _event(self, kind: VadKind, sample: int) -> VadEvent:
        return VadEvent(kind, sample, self.rate_hz)


class VadManager:
    """Decides where turns are detected; in local mode, feeds model-format audio to EnergyVad.

    Server mode: the model detects speech (turn_detection server_vad) and answers by itself.
    Local mode: the model's turn detection is off; when local speech stops the bridge commits
    the audio buffer and asks for a response.
    """

    def __init__(self, mode: VadMode, model_format: ModelAudioFormat, silence_ms: int = 300):
        self.mode = mode
        self.model_format = model_format
        self._mulaw = encoding_of(model_format).mulaw
        self._vad = EnergyVad(encoding_of(model_format).rate_hz, silence_ms=silence_ms)

    @property
    def turn_detection(self) -> Literal["server_vad"] | None:
        """The model's turn detection for this mode."""
        return "server_vad" if self.mode == "server" else None

    def feed(self, model_audio: bytes) -> list[VadKind]:
        """Local mode: "speech_started" / "speech_stopped" found in this chunk (server: none)."""
        if self.mode == "server":
            return []
        pcm = mulaw_to_pcm16(model_audio) if self._mulaw else model_audio
        return [event.kind for event in self._vad.feed(pcm)]

    def reset(self) -> None:
        """Forget a speech in progress (after barge-in or a reconnect)."""
        self._vad.reset()
