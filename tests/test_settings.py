"""Settings: environment variables, defaults, start-up errors naming the variable."""

from __future__ import annotations

import pytest

from sessions.errors import ConfigError
from sessions.factory import build_storage
from sessions.memory import MemorySessionStorage
from sessions.redis_async import RedisSessionStorage
from sessions.settings import load_settings

ALL_VARS = [
    "SESSION_STORAGE_TYPE", "REDIS_URL", "REDIS_PASSWORD", "REDIS_DB", "SESSION_TTL",
    "SESSION_PREFIX", "MAX_SESSIONS", "CLEANUP_INTERVAL", "MEMORY_MAX_SESSIONS",
    "MEMORY_CLEANUP_INTERVAL",
]  # fmt: skip


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ALL_VARS:
        monkeypatch.delenv(name, raising=False)


def test_defaults_run_embedded_on_memory() -> None:
    settings = load_settings()
    assert settings.storage_backend == "memory"
    assert settings.session_prefix == "opusagent:session:"
    assert (settings.session_ttl_s, settings.cleanup_interval_s) == (3600, 300)
    assert isinstance(build_storage(settings), MemorySessionStorage)


async def test_every_variable_is_read(monkeypatch: pytest.MonkeyPatch) -> None:
    env = {
        "REDIS_URL": "redis://127.0.0.1:6379",
        "REDIS_PASSWORD": "pw",
        "REDIS_DB": "3",
        "SESSION_TTL": "120",
        "SESSION_PREFIX": "x:",
        "MAX_SESSIONS": "5",
        "CLEANUP_INTERVAL": "60",
        "MEMORY_MAX_SESSIONS": "7",
        "MEMORY_CLEANUP_INTERVAL": "9",
    }
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    s = load_settings()
    assert s.storage_backend == "redis"
    assert s.effective_redis_url == "redis://127.0.0.1:6379/3"
    assert s.redis_kwargs() == {"password": "pw"}
    assert (s.session_ttl_s, s.session_prefix, s.max_sessions) == (120, "x:", 5)
    assert (s.cleanup_interval_s, s.memory_max_sessions, s.memory_cleanup_interval_s) == (60, 7, 9)
    assert "pw" not in repr(s)
    storage = build_storage(s)
    assert isinstance(storage, RedisSessionStorage) and storage.default_ttl == 120
    await storage.close()


def test_storage_type_memory_wins_over_redis_url(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("REDIS_URL", "redis://127.0.0.1:6379")
    monkeypatch.setenv("SESSION_STORAGE_TYPE", "memory")
    assert load_settings().storage_backend == "memory"


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("SESSION_TTL", "soon"),
        ("SESSION_TTL", "0"),
        ("REDIS_URL", "http://localhost:6379"),
        ("SESSION_STORAGE_TYPE", "mongo"),
        ("REDIS_DB", "-1"),
        ("MEMORY_MAX_SESSIONS", "0"),
        ("SESSION_PREFIX", "a b"),
    ],
)
def test_invalid_values_fail_at_start_up_naming_the_variable(
    monkeypatch: pytest.MonkeyPatch, name: str, value: str
) -> None:
    monkeypatch.setenv(name, value)
    with pytest.raises(ConfigError, match=name):
        load_settings()


def test_an_empty_secret_means_unset(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AUDIOCODES_BOT_TOKEN", "")
    monkeypatch.setenv("OPENAI_API_KEY", "")
    settings = load_settings()
    assert settings.audiocodes_bot_token is None and settings.openai_api_key is None
