"""opus-sessions: resumable, accountable voice-call sessions.

The public API::

    from sessions import SessionManagerService, build_storage, load_settings

    service = SessionManagerService(build_storage(load_settings()))

Storage backends (`MemorySessionStorage`, `RedisSessionStorage`) share the async
`SessionStorage` interface; `SyncRedisStore` and `MemoryStore` are the blocking stores that
task code uses. Every error derives from `OpusSessionsError`; `RetryableError` and
`TerminalError` say whether trying again can help.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from sessions.archive import ArchiveRecord as ArchiveRecord
    from sessions.archive import ArchiveUnavailable as ArchiveUnavailable
    from sessions.archive import NotArchivable as NotArchivable
    from sessions.errors import ConfigError as ConfigError
    from sessions.errors import CorruptSession as CorruptSession
    from sessions.errors import InvalidConversationId as InvalidConversationId
    from sessions.errors import InvalidSessionData as InvalidSessionData
    from sessions.errors import InvalidUpdate as InvalidUpdate
    from sessions.errors import OpusSessionsError as OpusSessionsError
    from sessions.errors import RetryableError as RetryableError
    from sessions.errors import SessionEnded as SessionEnded
    from sessions.errors import SessionExists as SessionExists
    from sessions.errors import SessionLimitReached as SessionLimitReached
    from sessions.errors import StorageUnavailable as StorageUnavailable
    from sessions.errors import TerminalError as TerminalError
    from sessions.factory import build_storage as build_storage
    from sessions.factory import build_sync_store as build_sync_store
    from sessions.memory import MemorySessionStorage as MemorySessionStorage
    from sessions.memory import MemoryStore as MemoryStore
    from sessions.redis_async import RedisSessionStorage as RedisSessionStorage
    from sessions.redis_sync import SyncRedisStore as SyncRedisStore
    from sessions.service import SessionManagerService as SessionManagerService
    from sessions.settings import Settings as Settings
    from sessions.settings import load_settings as load_settings
    from sessions.state import SessionState as SessionState
    from sessions.state import SessionStatus as SessionStatus
    from sessions.storage import ClaimOutcome as ClaimOutcome
    from sessions.storage import ClaimResult as ClaimResult
    from sessions.storage import EndOutcome as EndOutcome
    from sessions.storage import SessionStorage as SessionStorage
    from sessions.storage import UpdateOutcome as UpdateOutcome
    from sessions.usage import ModelInfo as ModelInfo
    from sessions.usage import ModelUsage as ModelUsage

# Each public name and the module defining it: imported on first use, so that importing one
# module of the package (a task, the CLI) does not load every backend.
_EXPORTS: dict[str, str] = {
    "ArchiveRecord": "sessions.archive",
    "ArchiveUnavailable": "sessions.archive",
    "ClaimOutcome": "sessions.storage",
    "ClaimResult": "sessions.storage",
    "ConfigError": "sessions.errors",
    "CorruptSession": "sessions.errors",
    "EndOutcome": "sessions.storage",
    "InvalidConversationId": "sessions.errors",
    "InvalidSessionData": "sessions.errors",
    "InvalidUpdate": "sessions.errors",
    "MemorySessionStorage": "sessions.memory",
    "MemoryStore": "sessions.memory",
    "ModelInfo": "sessions.usage",
    "ModelUsage": "sessions.usage",
    "NotArchivable": "sessions.archive",
    "OpusSessionsError": "sessions.errors",
    "RedisSessionStorage": "sessions.redis_async",
    "RetryableError": "sessions.errors",
    "SessionEnded": "sessions.errors",
    "SessionExists": "sessions.errors",
    "SessionLimitReached": "sessions.errors",
    "SessionManagerService": "sessions.service",
    "SessionState": "sessions.state",
    "SessionStatus": "sessions.state",
    "SessionStorage": "sessions.storage",
    "Settings": "sessions.settings",
    "StorageUnavailable": "sessions.errors",
    "SyncRedisStore": "sessions.redis_sync",
    "TerminalError": "sessions.errors",
    "UpdateOutcome": "sessions.storage",
    "build_storage": "sessions.factory",
    "build_sync_store": "sessions.factory",
    "load_settings": "sessions.settings",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'sessions' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return __all__
