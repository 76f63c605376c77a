"""The one settings object, read from the environment at the edge and passed down."""

from __future__ import annotations

from typing import Any, Literal
from urllib.parse import urlsplit, urlunsplit

from pydantic import Field, SecretStr, ValidationError, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from sessions.errors import ConfigError

DEFAULT_REDIS_URL = "redis://127.0.0.1:6379"
REDIS_SCHEMES = ("redis", "rediss", "unix")


class Settings(BaseSettings):
    """Every setting, with its environment variable and default."""

    model_config = SettingsConfigDict(extra="ignore", populate_by_name=True, frozen=True)

    # storage
    session_storage_type: Literal["memory", "redis"] | None = Field(
        default=None, validation_alias="SESSION_STORAGE_TYPE"
    )
    redis_url: str | None = Field(default=None, validation_alias="REDIS_URL")
    redis_password: SecretStr | None = Field(default=None, validation_alias="REDIS_PASSWORD")
    redis_db: int | None = Field(default=None, ge=0, le=15, validation_alias="REDIS_DB")
    redis_max_connections: int = Field(
        default=20, ge=1, le=10_000, validation_alias="REDIS_MAX_CONNECTIONS"
    )
    session_ttl_s: int = Field(default=3600, ge=1, validation_alias="SESSION_TTL")
    session_prefix: str = Field(
        default="opusagent:session:", min_length=1, max_length=64, validation_alias="SESSION_PREFIX"
    )
    max_sessions: int = Field(default=10_000, ge=1, validation_alias="MAX_SESSIONS")
    cleanup_interval_s: int = Field(default=300, ge=1, validation_alias="CLEANUP_INTERVAL")
    memory_max_sessions: int = Field(default=1000, ge=1, validation_alias="MEMORY_MAX_SESSIONS")
    memory_cleanup_interval_s: int = Field(
        default=300, ge=1, validation_alias="MEMORY_CLEANUP_INTERVAL"
    )
    key_ttl_margin_s: int = Field(default=900, ge=0, validation_alias="SESSION_KEY_TTL_MARGIN")
    ended_retention_s: int = Field(
        default=7 * 86_400, ge=60, validation_alias="ENDED_SESSION_RETENTION"
    )
    archived_retention_s: int = Field(
        default=3600, ge=0, validation_alias="ARCHIVED_SESSION_RETENTION"
    )
    audio_buffer_max_bytes: int = Field(
        default=256 * 1024, ge=0, validation_alias="AUDIO_BUFFER_MAX_BYTES"
    )

    @field_validator("redis_url")
    @classmethod
    def _redis_scheme(cls, value: str | None) -> str | None:
        if value is not None and urlsplit(value).scheme not in REDIS_SCHEMES:
            raise ValueError(
                f"must start with one of {', '.join(s + '://' for s in REDIS_SCHEMES)}"
            )
        return value or None

    @field_validator("session_prefix")
    @classmethod
    def _prefix_chars(cls, value: str) -> str:
        if any(c.isspace() or c in "*?[]" for c in value):
            raise ValueError("must not contain spaces or glob characters")
        return value

    @property
    def storage_backend(self) -> Literal["memory", "redis"]:
        """`redis` when asked for or when REDIS_URL is set; otherwise the embedded `memory`."""
        if self.session_storage_type is not None:
            return self.session_storage_type
        return "redis" if self.redis_url else "memory"

    @property
    def effective_redis_url(self) -> str:
        """REDIS_URL (or the local default) with REDIS_DB applied as the database."""
        url = self.redis_url or DEFAULT_REDIS_URL
        if self.redis_db is None:
            return url
        return urlunsplit(urlsplit(url)._replace(path=f"/{self.redis_db}"))

    def redis_kwargs(self) -> dict[str, Any]:
        """Client keyword arguments: REDIS_PASSWORD when the URL carries none."""
        if self.redis_password is None or urlsplit(self.effective_redis_url).password:
            return {}
        return {"password": self.redis_password.get_secret_value()}


def load_settings(**overrides: Any) -> Settings:
    """Settings from the environment; ConfigError names each invalid variable."""
    try:
        return Settings(**overrides)
    except ValidationError as exc:
        problems = []
        for err in exc.errors():
            name = str(err["loc"][0]).upper() if err["loc"] else "settings"
            problems.append(f"{name}: {err['msg']} (got {err.get('input')!r})")
        raise ConfigError("invalid configuration: " + "; ".join(problems)) from None
