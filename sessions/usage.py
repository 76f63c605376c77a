"""What a call used of the realtime model: which model and voice, and the tokens it billed."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

NonNegative = Field(default=0, ge=0)
COUNTER_PREFIX = "usage_"  # the statistics counters that sum the usage of archived calls


class ModelUsage(BaseModel):
    """Tokens by the kinds the provider bills, summed over a call's responses and transcripts.

    Cached tokens are a subset of the input tokens (as the provider reports them). Input
    transcription is billed apart: by tokens, or by audio duration for duration-billed models.
    """

    model_config = ConfigDict(extra="ignore", frozen=True)

    responses: int = NonNegative
    input_tokens: int = NonNegative
    input_text_tokens: int = NonNegative
    input_audio_tokens: int = NonNegative
    cached_tokens: int = NonNegative
    cached_text_tokens: int = NonNegative
    cached_audio_tokens: int = NonNegative
    output_tokens: int = NonNegative
    output_text_tokens: int = NonNegative
    output_audio_tokens: int = NonNegative
    transcription_input_tokens: int = NonNegative
    transcription_output_tokens: int = NonNegative
    transcription_ms: int = NonNegative

    @property
    def total_tokens(self) -> int:
        """Realtime input and output tokens together (transcription not included)."""
        return self.input_tokens + self.output_tokens

    def plus(self, other: ModelUsage) -> ModelUsage:
        """This usage and another added field by field (a new object: usages are frozen)."""
        summed = self.model_dump()
        for name, value in other.counters().items():
            summed[name] += value
        return ModelUsage(**summed)

    def counters(self) -> dict[str, int]:
        """The non-zero fields, by name."""
        return {name: value for name, value in self.model_dump().items() if value}

    def event_counters(self) -> dict[str, int]:
        """The non-zero fields as statistics counters (`usage_input_tokens`, ...)."""
        return {COUNTER_PREFIX + name: value for name, value in self.counters().items()}

    @classmethod
    def from_event_counters(cls, counters: dict[str, int]) -> ModelUsage:
        """The usage summed in statistics counters (the inverse of `event_counters`)."""
        size = len(COUNTER_PREFIX)
        return cls(**{k[size:]: v for k, v in counters.items() if k.startswith(COUNTER_PREFIX)
                      and k[size:] in cls.model_fields})  # fmt: skip


class ModelInfo(BaseModel):
    """Which realtime model served a call, and how (frozen: replaced, never changed)."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    provider: str
    model: str
    voice: str
    input_format: str
    output_format: str
    transcription_model: str | None = None
    sessions: int = Field(default=1, ge=0, description="model sessions opened for the call")
    rollovers: int = Field(default=0, ge=0, description="moves to a new session before the cap")
