"""Builds the storage backends from the settings object."""

from __future__ import annotations

from sessions.archive import ArchiveSink, FileSystemSink, PostgresSink
from sessions.memory import MemorySessionStorage, MemoryStore
from sessions.redis_async import RedisSessionStorage
from sessions.redis_ops import Retention
from sessions.redis_sync import SyncRedisStore
from sessions.redis_topology import RedisTopology
from sessions.settings import Settings
from sessions.state import SessionState
from sessions.storage import SessionStorage


def retention_of(settings: Settings) -> Retention:
    """Key lifetimes by stage, from the settings."""
    return Retention(
        session_ttl_s=settings.session_ttl_s,
        margin_s=settings.key_ttl_margin_s + settings.cleanup_interval_s,
        ended_s=settings.ended_retention_s,
        archived_s=settings.archived_retention_s,
    )


def apply_model_settings(settings: Settings) -> None:
    """Settings the state model enforces on its own (the audio buffer bound)."""
    SessionState.audio_buffer_max_bytes = settings.audio_buffer_max_bytes


def build_storage(settings: Settings) -> SessionStorage:
    """The async storage the settings ask for."""
    apply_model_settings(settings)
    if settings.storage_backend == "memory":
        return MemorySessionStorage(
            max_sessions=settings.memory_max_sessions,
            cleanup_interval=settings.memory_cleanup_interval_s,
            session_ttl_s=settings.session_ttl_s,
        )
    return RedisSessionStorage(
        settings.effective_redis_url,
        session_prefix=settings.session_prefix,
        default_ttl=settings.session_ttl_s,
        max_connections=settings.redis_max_connections,
        retention=retention_of(settings),
        topology=RedisTopology.from_settings(settings),
    )


def build_sync_store(
    settings: Settings, memory: MemorySessionStorage | None = None
) -> SyncRedisStore | MemoryStore:
    """The blocking store for task code: Redis, or the given in-process memory store."""
    apply_model_settings(settings)
    if settings.storage_backend == "memory":
        if memory is None:
            raise ValueError("the memory backend is shared in-process: pass its storage")
        return memory.store
    return SyncRedisStore(
        settings.effective_redis_url,
        settings.session_prefix,
        retention_of(settings),
        max_connections=settings.redis_max_connections,
        topology=RedisTopology.from_settings(settings),
    )


def build_sink(settings: Settings) -> ArchiveSink:
    """PostgreSQL when ARCHIVE_URL is set, else the filesystem under ARCHIVE_DIR."""
    if settings.archive_url:
        return PostgresSink(settings.effective_archive_url or "", settings.archive_table)
    return FileSystemSink(settings.archive_dir)
