"""How to reach the realtime model (OpenAI or Azure OpenAI) and how its GA session is set up."""

from __future__ import annotations

from typing import Any, Literal
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from pydantic import BaseModel, ConfigDict, Field, SecretStr

from bridges.audio import ModelAudioFormat
from sessions.errors import ConfigError
from sessions.settings import Settings

Provider = Literal["openai", "azure"]
TurnDetection = Literal["server_vad", "semantic_vad"]
NoiseReduction = Literal["near_field", "far_field"]
AZURE_PATH = "/openai/v1/realtime"
# The `audio.*.format` object of each model format (GA: PCM16 is always 24 kHz).
WIRE_FORMATS: dict[ModelAudioFormat, dict[str, Any]] = {
    "audio/pcm": {"type": "audio/pcm", "rate": 24_000},
    "audio/pcmu": {"type": "audio/pcmu"},
}
# A model session's age before the call rolls over to a new one: below each provider's cap
# (OpenAI 60 minutes, Azure 30), so that a turn boundary can be waited for.
SESSION_MAX_S: dict[Provider, float] = {"openai": 55 * 60.0, "azure": 27 * 60.0}
# The variables that configure each provider, for errors that name what to fix.
SETTING_NAMES: dict[Provider, dict[str, str]] = {
    "openai": {
        "key": "OPENAI_API_KEY",
        "model": "OPENAI_REALTIME_MODEL",
        "url": "OPENAI_REALTIME_URL",
    },
    "azure": {
        "key": "AZURE_OPENAI_API_KEY (or AZURE_OPENAI_AD_TOKEN)",
        "model": "AZURE_OPENAI_DEPLOYMENT",
        "url": "AZURE_OPENAI_ENDPOINT",
    },
}


class RealtimeConfig(BaseModel):
    """One call's model connection: endpoint and credential, and the session it asks for."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    provider: Provider = "openai"
    url: str = "wss://api.openai.com/v1/realtime"
    model: str = "gpt-realtime"
    api_key: SecretStr | None = None
    auth: Literal["bearer", "api-key"] = "bearer"
    voice: str = "marin"
    instructions: str = ""
    input_format: ModelAudioFormat = "audio/pcm"
    output_format: ModelAudioFormat = "audio/pcm"
    turn_detection: TurnDetection | None = "server_vad"
    silence_duration_ms: int | None = Field(default=None, ge=0)
    transcription_model: str | None = "gpt-4o-mini-transcribe"
    noise_reduction: NoiseReduction | None = "near_field"
    tools: list[dict[str, Any]] = Field(default_factory=list)
    session_max_s: float = Field(default=3300.0, gt=0)  # roll over before this age
    deflate: bool = False  # offer permessage-deflate

    @classmethod
    def from_settings(cls, settings: Settings, **overrides: Any) -> RealtimeConfig:
        """The config the settings describe, with `overrides` on top; ConfigError if incomplete."""
        noise = settings.model_noise_reduction
        base: dict[str, Any] = {
            "provider": settings.model_provider,
            "voice": settings.openai_voice,
            "instructions": settings.bot_instructions,
            "transcription_model": settings.openai_transcription_model,
            "noise_reduction": None if noise == "off" else noise,
            "session_max_s": settings.model_session_max_s or SESSION_MAX_S[settings.model_provider],
            "deflate": settings.websocket_deflate,
        }
        base |= _azure(settings) if settings.model_provider == "azure" else _openai(settings)
        return cls(**(base | overrides))

    @property
    def endpoint(self) -> str:
        """The URL with `model=` in its query (the deployment name on Azure)."""
        parts = urlsplit(self.url)
        query = [(k, v) for k, v in parse_qsl(parts.query) if k != "model"]
        return urlunsplit(parts._replace(query=urlencode([*query, ("model", self.model)])))

    def headers(self) -> dict[str, str]:
        """The credential header (none without a key): a bearer token, or Azure's `api-key`."""
        if self.api_key is None:
            return {}
        secret = self.api_key.get_secret_value()
        return (
            {"api-key": secret} if self.auth == "api-key" else {"Authorization": f"Bearer {secret}"}
        )

    def setting(self, what: Literal["key", "model", "url"]) -> str:
        """The variable that configures `what` for this provider."""
        return SETTING_NAMES[self.provider][what]

    def describe(self) -> str:
        """Provider, endpoint (no query, no user info) and model for logs; never a credential."""
        parts = urlsplit(self.url)
        host = parts.hostname or ""
        where = f"{parts.scheme}://{host}{f':{parts.port}' if parts.port else ''}{parts.path}"
        return f"{self.provider} {where} model {self.model}"


def _openai(settings: Settings) -> dict[str, Any]:
    key = settings.openai_api_key
    return {
        "url": settings.openai_realtime_url,
        "model": settings.openai_realtime_model,
        "api_key": key,
        "auth": "bearer",
    }


def _azure(settings: Settings) -> dict[str, Any]:
    needed = {
        "AZURE_OPENAI_ENDPOINT": settings.azure_openai_endpoint,
        "AZURE_OPENAI_DEPLOYMENT": settings.azure_openai_deployment,
    }
    missing = [name for name, value in needed.items() if not value]
    if missing:
        raise ConfigError(f"MODEL_PROVIDER=azure needs {' and '.join(missing)}")
    assert settings.azure_openai_endpoint is not None
    key, token = settings.azure_openai_api_key, settings.azure_openai_ad_token
    return {
        "url": azure_url(settings.azure_openai_endpoint),
        "model": settings.azure_openai_deployment,
        "api_key": key or token,
        "auth": "api-key" if key else "bearer",
    }


def azure_url(endpoint: str) -> str:
    """The GA v1 realtime URL of an Azure OpenAI resource (`https://name.openai.azure.com`)."""
    parts = urlsplit(endpoint)
    scheme = {"https": "wss", "http": "ws"}.get(parts.scheme, parts.scheme)
    path = parts.path.rstrip("/")
    if not path.endswith(AZURE_PATH):
        path += AZURE_PATH
    return urlunsplit(parts._replace(scheme=scheme, path=path, query="", fragment=""))


def session_update_event(config: RealtimeConfig) -> dict[str, Any]:
    """The GA `session.update` that sets the model up for a call."""
    audio_input: dict[str, Any] = {
        "format": WIRE_FORMATS[config.input_format],
        "transcription": (
            {"model": config.transcription_model} if config.transcription_model else None
        ),
        "turn_detection": _turn_detection(config),
        "noise_reduction": (
            {"type": config.noise_reduction} if config.noise_reduction is not None else None
        ),
    }
    session = {
        "type": "realtime",
        "model": config.model,
        "output_modalities": ["audio"],
        "instructions": config.instructions,
        "audio": {
            "input": audio_input,
            "output": {"format": WIRE_FORMATS[config.output_format], "voice": config.voice},
        },
        "tools": list(config.tools),
        "tool_choice": "auto",
    }
    return {"type": "session.update", "session": session}


def _turn_detection(config: RealtimeConfig) -> dict[str, Any] | None:
    if config.turn_detection is None:
        return None
    detection: dict[str, Any] = {"type": config.turn_detection}
    if config.turn_detection == "server_vad" and config.silence_duration_ms is not None:
        detection["silence_duration_ms"] = config.silence_duration_ms
    return detection
