"""The one settings object, read from the environment at the edge and passed down."""

from __future__ import annotations

from typing import Any, Literal
from urllib.parse import quote, urlsplit, urlunsplit

from pydantic import Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from sessions.errors import ConfigError

DEFAULT_REDIS_URL = "redis://127.0.0.1:6379"
DEFAULT_CLUSTER_SHARDS = 16
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
    redis_username: str | None = Field(
        default=None, max_length=200, validation_alias="REDIS_USERNAME"
    )
    # Redis Sentinel: the sentinels (host:port,...) and the name of the master they watch
    redis_sentinels: str | None = Field(default=None, validation_alias="REDIS_SENTINELS")
    redis_sentinel_master: str | None = Field(
        default=None, max_length=200, validation_alias="REDIS_SENTINEL_MASTER"
    )
    redis_sentinel_username: str | None = Field(
        default=None, max_length=200, validation_alias="REDIS_SENTINEL_USERNAME"
    )
    redis_sentinel_password: SecretStr | None = Field(
        default=None, validation_alias="REDIS_SENTINEL_PASSWORD"
    )
    # Redis Cluster: REDIS_URL names any node; keys are spread over REDIS_SHARDS hash slots
    redis_cluster: bool = Field(default=False, validation_alias="REDIS_CLUSTER")
    redis_shards: int | None = Field(default=None, ge=1, le=1024, validation_alias="REDIS_SHARDS")
    handoff_replicas: int | None = Field(
        default=None, ge=0, le=16, validation_alias="HANDOFF_REPLICAS"
    )
    handoff_wait_ms: int = Field(default=500, ge=1, le=10_000, validation_alias="HANDOFF_WAIT_MS")
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

    # task queue
    celery_broker_url: str | None = Field(default=None, validation_alias="CELERY_BROKER_URL")
    celery_key_prefix: str = Field(default="", max_length=64, validation_alias="CELERY_KEY_PREFIX")
    task_time_limit_s: int = Field(default=15, ge=2, le=3600, validation_alias="TASK_TIME_LIMIT")
    visibility_timeout_s: int = Field(
        default=30, ge=2, le=86_400, validation_alias="CELERY_VISIBILITY_TIMEOUT"
    )
    statistics_interval_s: int = Field(default=60, ge=1, validation_alias="STATISTICS_INTERVAL")
    sweep_batch_size: int = Field(default=500, ge=1, le=10_000, validation_alias="SWEEP_BATCH_SIZE")
    archive_retry_after_s: int = Field(default=60, ge=1, validation_alias="ARCHIVE_RETRY_AFTER")

    # persister (bridge side)
    save_interval_ms: int = Field(default=200, ge=1, le=60_000, validation_alias="SAVE_INTERVAL_MS")
    persist_max_batch: int = Field(default=50, ge=1, le=5000, validation_alias="PERSIST_MAX_BATCH")
    persist_max_pending: int = Field(default=100_000, ge=1, validation_alias="PERSIST_MAX_PENDING")

    # bridges and the realtime model
    bridge_host: str = Field(default="127.0.0.1", validation_alias="BRIDGE_HOST")
    bridge_port: int = Field(default=8080, ge=0, le=65535, validation_alias="BRIDGE_PORT")
    audiocodes_bot_token: SecretStr | None = Field(
        default=None, validation_alias="AUDIOCODES_BOT_TOKEN"
    )
    twilio_auth_token: SecretStr | None = Field(default=None, validation_alias="TWILIO_AUTH_TOKEN")
    audiocodes_enabled: bool = Field(default=True, validation_alias="AUDIOCODES_ENABLED")
    twilio_enabled: bool = Field(default=True, validation_alias="TWILIO_ENABLED")
    allow_unauthenticated: bool = Field(default=False, validation_alias="ALLOW_UNAUTHENTICATED")
    operator_token: SecretStr | None = Field(default=None, validation_alias="OPERATOR_TOKEN")
    max_calls: int = Field(default=200, ge=1, le=100_000, validation_alias="MAX_CALLS")
    auth_failure_limit: int = Field(
        default=20, ge=1, le=100_000, validation_alias="AUTH_FAILURE_LIMIT"
    )
    send_session_resumed: bool = Field(default=True, validation_alias="SEND_SESSION_RESUMED")
    resume_handoff_ms: int = Field(
        default=1000, ge=0, le=30_000, validation_alias="RESUME_HANDOFF_MS"
    )
    twilio_stop_grace_s: float = Field(
        default=15.0, ge=0, le=3600, validation_alias="TWILIO_STOP_GRACE_S"
    )
    vad_mode: Literal["server", "local"] = Field(default="server", validation_alias="VAD_MODE")
    max_frame_bytes: int = Field(
        default=64 * 1024, ge=1024, le=16 * 1024 * 1024, validation_alias="MAX_FRAME_BYTES"
    )
    # permessage-deflate on both legs: costs CPU and relay latency on base64 audio
    websocket_deflate: bool = Field(default=False, validation_alias="WEBSOCKET_DEFLATE")

    # the realtime model (OpenAI Realtime GA protocol, on OpenAI or Azure OpenAI)
    model_provider: Literal["openai", "azure"] = Field(
        default="openai", validation_alias="MODEL_PROVIDER"
    )
    openai_api_key: SecretStr | None = Field(default=None, validation_alias="OPENAI_API_KEY")
    openai_realtime_url: str = Field(
        default="wss://api.openai.com/v1/realtime", validation_alias="OPENAI_REALTIME_URL"
    )
    openai_realtime_model: str = Field(
        default="gpt-realtime",
        min_length=1,
        max_length=200,
        validation_alias="OPENAI_REALTIME_MODEL",
    )
    azure_openai_endpoint: str | None = Field(
        default=None, validation_alias="AZURE_OPENAI_ENDPOINT"
    )
    azure_openai_deployment: str | None = Field(
        default=None, min_length=1, max_length=200, validation_alias="AZURE_OPENAI_DEPLOYMENT"
    )
    azure_openai_api_key: SecretStr | None = Field(
        default=None, validation_alias="AZURE_OPENAI_API_KEY"
    )
    azure_openai_ad_token: SecretStr | None = Field(
        default=None, validation_alias="AZURE_OPENAI_AD_TOKEN"
    )
    openai_voice: str = Field(
        default="marin", min_length=1, max_length=100, validation_alias="OPENAI_VOICE"
    )
    openai_transcription_model: str | None = Field(
        default="gpt-4o-mini-transcribe",
        max_length=200,
        validation_alias="OPENAI_TRANSCRIPTION_MODEL",
    )
    model_session_max_s: float | None = Field(
        default=None, gt=0, le=86_400, validation_alias="MODEL_SESSION_MAX_S"
    )
    model_noise_reduction: Literal["near_field", "far_field", "off"] = Field(
        default="near_field", validation_alias="MODEL_NOISE_REDUCTION"
    )
    bot_instructions: str = Field(
        default="You are a helpful voice assistant on a phone call. Be brief.",
        validation_alias="BOT_INSTRUCTIONS",
    )

    # archive
    archive_dir: str = Field(default="var/archive", min_length=1, validation_alias="ARCHIVE_DIR")
    archive_url: str | None = Field(default=None, validation_alias="ARCHIVE_URL")
    archive_password: SecretStr | None = Field(default=None, validation_alias="ARCHIVE_PASSWORD")
    archive_table: str = Field(
        default="session_archive",
        pattern=r"^[a-z_][a-z0-9_]{0,62}$",
        validation_alias="ARCHIVE_TABLE",
    )

    @field_validator(
        "redis_password",
        "audiocodes_bot_token",
        "twilio_auth_token",
        "operator_token",
        "archive_password",
        "openai_api_key",
        "azure_openai_api_key",
        "azure_openai_ad_token",
        "azure_openai_endpoint",
        "azure_openai_deployment",
        "openai_transcription_model",
        "model_session_max_s",
        "redis_username",
        "redis_sentinels",
        "redis_sentinel_master",
        "redis_sentinel_username",
        "redis_sentinel_password",
        "redis_shards",
        "handoff_replicas",
        mode="before",
    )
    @classmethod
    def _empty_is_unset(cls, value: Any) -> Any:
        return None if value == "" else value

    @field_validator("redis_url")
    @classmethod
    def _redis_scheme(cls, value: str | None) -> str | None:
        if value is not None and urlsplit(value).scheme not in REDIS_SCHEMES:
            raise ValueError(
                f"must start with one of {', '.join(s + '://' for s in REDIS_SCHEMES)}"
            )
        return value or None

    @field_validator("openai_realtime_url")
    @classmethod
    def _ws_scheme(cls, value: str) -> str:
        if urlsplit(value).scheme not in ("ws", "wss"):
            raise ValueError("must be a ws:// or wss:// URL")
        return value

    @field_validator("azure_openai_endpoint")
    @classmethod
    def _azure_scheme(cls, value: str | None) -> str | None:
        if value is not None and urlsplit(value).scheme not in ("https", "wss", "http", "ws"):
            raise ValueError("must be https://<resource>.openai.azure.com (or a wss:// URL)")
        return value

    @field_validator("archive_url")
    @classmethod
    def _archive_scheme(cls, value: str | None) -> str | None:
        if value and urlsplit(value).scheme not in ("postgresql", "postgres"):
            raise ValueError("must be a postgresql:// URL (leave unset for the filesystem archive)")
        return value or None

    @field_validator("visibility_timeout_s")
    @classmethod
    def _visibility_past_time_limit(cls, value: int, info: Any) -> int:
        limit = info.data.get("task_time_limit_s")
        if limit is not None and value <= limit:
            raise ValueError(f"must be longer than TASK_TIME_LIMIT ({limit} s)")
        return value

    @field_validator("session_prefix")
    @classmethod
    def _prefix_chars(cls, value: str) -> str:
        if any(c.isspace() or c in "*?[]" for c in value):
            raise ValueError("must not contain spaces or glob characters")
        return value

    @field_validator("redis_sentinels")
    @classmethod
    def _sentinel_list(cls, value: str | None) -> str | None:
        if value is not None:
            parse_addresses(value)
        return value

    @model_validator(mode="after")
    def _one_topology(self) -> Settings:
        if self.redis_sentinels and not self.redis_sentinel_master:
            raise ValueError("REDIS_SENTINEL_MASTER: required with REDIS_SENTINELS")
        if self.redis_sentinels and self.redis_cluster:
            raise ValueError("REDIS_CLUSTER: a Redis is watched by sentinels or a cluster, "
                             "not both (unset REDIS_SENTINELS or REDIS_CLUSTER)")  # fmt: skip
        if self.redis_cluster and not self.celery_broker_url:
            raise ValueError("CELERY_BROKER_URL: required with REDIS_CLUSTER (the task queue "
                             "needs a plain or Sentinel Redis, or RabbitMQ)")  # fmt: skip
        if self.key_shards > 1 and any(c in self.session_prefix for c in "{}"):
            raise ValueError("SESSION_PREFIX: must not contain { or } with REDIS_SHARDS > 1 "
                             "or REDIS_CLUSTER (the key's hash tag is added after it)")  # fmt: skip
        return self

    @property
    def storage_backend(self) -> Literal["memory", "redis"]:
        """`redis` when asked for or when REDIS_URL or REDIS_SENTINELS is set; otherwise the
        embedded `memory`."""
        if self.session_storage_type is not None:
            return self.session_storage_type
        return "redis" if self.redis_url or self.redis_sentinels else "memory"

    @property
    def key_shards(self) -> int:
        """REDIS_SHARDS: 16 on a cluster, otherwise 1 (the layout with no hash tags)."""
        if self.redis_shards is not None:
            return self.redis_shards
        return DEFAULT_CLUSTER_SHARDS if self.redis_cluster else 1

    @property
    def effective_handoff_replicas(self) -> int:
        """HANDOFF_REPLICAS: replicas that acknowledge a hand-off; 1 with Sentinel, else 0."""
        if self.handoff_replicas is not None:
            return self.handoff_replicas
        return 1 if self.redis_sentinels else 0

    @property
    def effective_redis_url(self) -> str:
        """REDIS_URL (or the local default) with REDIS_DB applied as the database."""
        url = self.redis_url or DEFAULT_REDIS_URL
        if self.redis_db is None:
            return url
        return urlunsplit(urlsplit(url)._replace(path=f"/{self.redis_db}"))

    @property
    def broker_url(self) -> str:
        """CELERY_BROKER_URL, or the session Redis (with REDIS_PASSWORD folded into the URL):
        on Sentinel, kombu's `sentinel://host:port;sentinel://...` list of the sentinels."""
        if self.celery_broker_url:
            return self.celery_broker_url
        if self.redis_sentinels:
            return ";".join(self._sentinel_url(host, port)
                            for host, port in parse_addresses(self.redis_sentinels))  # fmt: skip
        url = self.effective_redis_url
        password = self.redis_kwargs().get("password")
        return with_password(url, password) if password else url

    @property
    def effective_archive_url(self) -> str | None:
        """ARCHIVE_URL with ARCHIVE_PASSWORD folded in (escaped) when the URL carries none."""
        if not self.archive_url or self.archive_password is None:
            return self.archive_url
        return with_password(self.archive_url, self.archive_password.get_secret_value())

    def _sentinel_url(self, host: str, port: int) -> str:
        user = quote(self.redis_username or "", safe="")
        secret = self.redis_password.get_secret_value() if self.redis_password else None
        auth = f"{user}:{quote(secret, safe='')}@" if secret else (f"{user}@" if user else "")
        return f"sentinel://{auth}{host}:{port}/{self.redis_db or 0}"

    def sentinel_kwargs(self) -> dict[str, Any]:
        """How to authenticate to the sentinels themselves (REDIS_SENTINEL_USERNAME/PASSWORD)."""
        out: dict[str, Any] = {}
        if self.redis_sentinel_username:
            out["username"] = self.redis_sentinel_username
        if self.redis_sentinel_password is not None:
            out["password"] = self.redis_sentinel_password.get_secret_value()
        return out

    def redis_kwargs(self) -> dict[str, Any]:
        """Client keyword arguments: REDIS_PASSWORD when the URL carries none."""
        if self.redis_password is None or urlsplit(self.effective_redis_url).password:
            return {}
        return {"password": self.redis_password.get_secret_value()}


def parse_addresses(text: str) -> list[tuple[str, int]]:
    """`host:port,host:port` as pairs; ValueError naming the malformed entry."""
    out = []
    for index, entry in enumerate(e.strip() for e in text.split(",")):
        host, _, port = entry.rpartition(":")
        if not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise ValueError(f"entry {index + 1} is not host:port (a list: host:port,host:port)")
        out.append((host.strip("[]"), int(port)))
    return out


def with_password(url: str, password: str) -> str:
    """`url` with `password` in its user info (percent-escaped), unless it carries one."""
    parts = urlsplit(url)
    if parts.password is not None or parts.hostname is None:
        return url
    netloc = f"{quote(parts.username or '', safe='')}:{quote(password, safe='')}@{parts.hostname}"
    netloc += f":{parts.port}" if parts.port else ""
    return urlunsplit(parts._replace(netloc=netloc))


def load_settings(**overrides: Any) -> Settings:
    """Settings from the environment; ConfigError names each invalid variable and its rule.

    The rejected value is never shown: it may be a secret, or a URL holding one.
    """
    try:
        return Settings(**overrides)
    except ValidationError as exc:
        problems = []
        for err in exc.errors():
            message = str(err["msg"]).removeprefix("Value error, ")
            if err["loc"]:
                problems.append(f"{str(err['loc'][0]).upper()}: {message}")
            else:  # a rule across variables: the message names them
                problems.append(message)
        raise ConfigError("invalid configuration: " + "; ".join(problems)) from None
