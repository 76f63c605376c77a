"""The simulator's model of one session: its GA configuration, its conversation, its answers.

Everything here is deterministic: the configuration a session starts with and how a
`session.update` merges into it, the conversation's items in their GA shape, what the
"model" says next (a greeting before any user turn, "you said <digits>" after one, a call of
the first tool for an utterance starting with 9, "ok done" after a function call's output),
and the usage a real server would bill for it.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any

from bridges.audio import MediaFormat
from bridges.sim.speech import digits_of

PREFIX_PADDING_MS = 300
PCM_FORMAT: dict[str, Any] = {"type": "audio/pcm", "rate": 24_000}
# Each GA input/output format as the telephony-side format the simulator codes it with.
AS_MEDIA: dict[str, MediaFormat] = {"audio/pcm": "raw/lpcm16_24", "audio/pcmu": "raw/mulaw"}
AUDIO_TOKENS_PER_S = 10  # what a real server bills, roughly: input audio
OUTPUT_AUDIO_TOKENS_PER_S = 20


def default_session(
    session_id: str, model: str, expires_at: int, silence_ms: int
) -> dict[str, Any]:
    """The GA session a new connection starts with (as `session.created` shows it)."""
    return {
        "type": "realtime",
        "object": "realtime.session",
        "id": session_id,
        "model": model,
        "expires_at": expires_at,
        "output_modalities": ["audio"],
        "instructions": "",
        "audio": {
            "input": {
                "format": dict(PCM_FORMAT),
                "transcription": None,
                "noise_reduction": None,
                "turn_detection": server_vad(silence_ms),
            },
            "output": {"format": dict(PCM_FORMAT), "voice": "marin", "speed": 1.0},
        },
        "tools": [],
        "tool_choice": "auto",
        "max_output_tokens": "inf",
        "truncation": "auto",
    }


def server_vad(silence_ms: int) -> dict[str, Any]:
    """Server VAD with the server's defaults."""
    return {
        "type": "server_vad",
        "threshold": 0.5,
        "prefix_padding_ms": PREFIX_PADDING_MS,
        "silence_duration_ms": silence_ms,
        "create_response": True,
        "interrupt_response": True,
    }


def merge_session(current: dict[str, Any], update: dict[str, Any], silence_ms: int) -> None:
    """Apply a (checked) `session.update` in place: nested objects merge, values replace."""
    for key, value in update.items():
        if key == "audio" and isinstance(value, dict):
            for side in ("input", "output"):
                current["audio"][side].update(copy.deepcopy(value.get(side) or {}))
        else:
            current[key] = copy.deepcopy(value)
    detection = current["audio"]["input"].get("turn_detection")
    if isinstance(detection, dict):
        defaults = server_vad(silence_ms) if detection.get("type") == "server_vad" else {}
        current["audio"]["input"]["turn_detection"] = {**defaults, **detection}


def format_type(fmt: dict[str, Any] | None) -> str:
    """The `type` of an audio format object (PCM when unset, as the server defaults)."""
    return str((fmt or {}).get("type") or "audio/pcm")


def text_tokens(text: str) -> int:
    """Roughly how many tokens a text is (four characters a token)."""
    return len(text) // 4 + 1 if text else 0


@dataclass
class Entry:
    """One conversation item in its GA shape, with what the simulator knows of it."""

    item: dict[str, Any]
    text: str = ""
    audio_ms: int = 0

    @property
    def id(self) -> str:
        return str(self.item["id"])


@dataclass
class Conversation:
    """The items of one session, in order."""

    entries: list[Entry] = field(default_factory=list)

    def last_id(self) -> str | None:
        """The id of the newest item."""
        return self.entries[-1].id if self.entries else None

    def add(self, entry: Entry) -> str | None:
        """Append an item; the id of the item before it."""
        previous = self.last_id()
        self.entries.append(entry)
        return previous

    def find(self, item_id: str) -> Entry | None:
        """The item with an id, if any."""
        return next((e for e in self.entries if e.id == item_id), None)

    def remove(self, item_id: str) -> bool:
        """Delete an item; False when there is none."""
        entry = self.find(item_id)
        if entry is not None:
            self.entries.remove(entry)
        return entry is not None

    def has_call(self, call_id: str) -> bool:
        """Whether a function call with this call id is in the conversation."""
        return any(
            e.item.get("type") == "function_call" and e.item.get("call_id") == call_id
            for e in self.entries
        )

    def plan(self, tools: list[dict[str, Any]]) -> tuple[str, str]:
        """("call", account digits) or ("speak", text): what the model does next."""
        if self.entries and self.entries[-1].item.get("type") == "function_call_output":
            return "speak", "ok done"
        users = [i for i, e in enumerate(self.entries) if e.item.get("role") == "user"]
        if not users:
            return "speak", "hello"
        said = self.entries[users[-1]].text
        answered = any(e.item.get("type") == "function_call" for e in self.entries[users[-1] :])
        if said.startswith("9") and tools and not answered:
            return "call", digits_of(said)[1:]
        return "speak", f"you said {said}"

    def input_usage(self) -> tuple[int, int]:
        """(text tokens, audio tokens) the whole conversation costs as input."""
        text = sum(text_tokens(e.text) for e in self.entries if not e.audio_ms)
        audio = sum(e.audio_ms * AUDIO_TOKENS_PER_S // 1000 for e in self.entries if e.audio_ms)
        return text, audio


def response_usage(
    conversation: Conversation, cached: int, output_text: str, output_ms: int
) -> dict[str, Any]:
    """A response's `usage`, billed like a real server's (cached input from earlier turns)."""
    text_in, audio_in = conversation.input_usage()
    total_in = text_in + audio_in
    cached = min(cached, total_in)
    text_out = text_tokens(output_text)
    audio_out = output_ms * OUTPUT_AUDIO_TOKENS_PER_S // 1000
    return {
        "total_tokens": total_in + text_out + audio_out,
        "input_tokens": total_in,
        "output_tokens": text_out + audio_out,
        "input_token_details": {
            "text_tokens": text_in,
            "audio_tokens": audio_in,
            "cached_tokens": cached,
            "cached_tokens_details": {
                "text_tokens": min(cached, text_in),
                "audio_tokens": max(0, cached - text_in),
            },
        },
        "output_token_details": {"text_tokens": text_out, "audio_tokens": audio_out},
    }


def transcription_usage(model: str, audio_ms: int, transcript: str) -> dict[str, Any]:
    """A transcription's `usage`: by duration for whisper-1, by tokens for the others."""
    if model == "whisper-1":
        return {"type": "duration", "seconds": audio_ms / 1000}
    audio = audio_ms * AUDIO_TOKENS_PER_S // 1000
    out = text_tokens(transcript)
    return {
        "type": "tokens",
        "input_tokens": audio,
        "output_tokens": out,
        "total_tokens": audio + out,
        "input_token_details": {"audio_tokens": audio, "text_tokens": 0},
    }
