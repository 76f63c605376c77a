"""Voice activity detection: the model's server VAD (default) or a local energy VAD."""

from __future__ import annotations

from typing import Literal

from bridges.audio import ModelAudioFormat, mulaw_to_pcm16
from bridges.speech import EnergyVad

VadMode = Literal["server", "local"]
MODEL_RATES_HZ = {"pcm16": 24_000, "g711_ulaw": 8000}


class VadManager:
    """Decides where turns are detected; in local mode, feeds model-format audio to EnergyVad.

    Server mode: the model detects speech (turn_detection server_vad) and answers by itself.
    Local mode: the model's turn detection is off; when local speech stops the bridge commits
    the audio buffer and asks for a response.
    """

    def __init__(self, mode: VadMode, model_format: ModelAudioFormat, silence_ms: int = 300):
        self.mode = mode
        self.model_format = model_format
        self._vad = EnergyVad(MODEL_RATES_HZ[model_format], silence_ms=silence_ms)

    @property
    def turn_detection(self) -> Literal["server_vad"] | None:
        """The model's turn detection for this mode."""
        return "server_vad" if self.mode == "server" else None

    def feed(self, model_audio: bytes) -> list[str]:
        """Local mode: "speech_started" / "speech_stopped" found in this chunk (server: none)."""
        if self.mode == "server":
            return []
        pcm = mulaw_to_pcm16(model_audio) if self.model_format == "g711_ulaw" else model_audio
        return [event.kind for event in self._vad.feed(pcm)]

    def reset(self) -> None:
        """Forget a speech in progress (after barge-in or a reconnect)."""
        self._vad.reset()
