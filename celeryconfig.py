"""Celery settings, built from the one settings object (`sessions.settings`).

Reliability choices, and why:
- every task is idempotent (compare-and-set saves, archive by id, a sweep lock) and short
  (TASK_TIME_LIMIT, default 15 s; sweeps continue in follow-up tasks), so a message may be
  redelivered safely and the Redis visibility timeout can be short: 30 s by default;
- late acks + reject on worker loss: a message is acknowledged after its task ran, and a
  worker that dies mid-task leaves it unacknowledged;
- kombu restores unacknowledged messages older than the visibility timeout; the restore
  pass runs every second here (not every 100 s), so a dead worker's messages come back
  about one visibility timeout after they were delivered;
- message bodies are compressed with zstd (zlib where the zstd module is missing): a
  save batch of 500 snapshots shrinks about 5-fold, which the broker, the unacked copy
  kept for late acks and every JSON pass over the envelope feel directly;
- retries never wait longer than a few seconds (shorter than the visibility timeout, so a
  waiting retry is not redelivered as a duplicate); archives that keep failing stay in the
  archive backlog index and the sweep queues them again.
"""

from __future__ import annotations

import sys
from typing import Any
from urllib.parse import urlsplit

from kombu import Exchange, Queue
from kombu.compression import encoders

from sessions.errors import ConfigError
from sessions.settings import Settings, load_settings

QUEUES = ("persistence", "archive", "maintenance")
# Prefetch per queue: run one worker per group, e.g. `-Q persistence --prefetch-multiplier 4`.
PREFETCH = {"persistence": 4, "archive": 1, "maintenance": 1}
SWEEP_TASK = "opus.maintenance.sweep_expired_sessions"
STATISTICS_TASK = "opus.maintenance.compute_statistics"
COMPRESSION = "zstd" if "application/zstd" in encoders() else "zlib"


def build(settings: Settings) -> dict[str, Any]:
    """The Celery configuration for these settings."""
    scheme = urlsplit(settings.broker_url.split(";")[0]).scheme
    redis_transport = scheme in ("redis", "rediss", "unix", "sentinel")
    transport: dict[str, Any] = {
        "visibility_timeout": settings.visibility_timeout_s,
        "unacked_restore_interval": 1,
        "unacked_restore_throttle": 1,
        "socket_timeout": 5,
        "socket_connect_timeout": 5,
        "health_check_interval": 10,
        "retry_on_timeout": True,
    }
    if settings.celery_key_prefix:
        transport["global_keyprefix"] = settings.celery_key_prefix
    if scheme == "sentinel":  # the master the sentinels watch, and how to talk to them
        if not settings.redis_sentinel_master:
            raise ConfigError("REDIS_SENTINEL_MASTER: required with a sentinel:// broker")
        transport["master_name"] = settings.redis_sentinel_master
        transport["sentinel_kwargs"] = {"socket_timeout": 5, **settings.sentinel_kwargs()}
    soft_limit_s = max(1, settings.task_time_limit_s - 3)
    return {
        "broker_url": settings.broker_url,
        "broker_transport_options": transport if redis_transport else {},
        "broker_connection_retry_on_startup": True,
        "broker_connection_max_retries": 20,
        "result_backend": None,
        "task_ignore_result": True,
        "task_serializer": "json",
        "task_compression": COMPRESSION,
        "result_serializer": "json",
        "event_serializer": "json",
        "accept_content": ["json"],
        "result_accept_content": ["json"],
        "task_acks_late": True,
        "task_reject_on_worker_lost": True,
        "worker_prefetch_multiplier": 1,
        "task_time_limit": settings.task_time_limit_s,
        "task_soft_time_limit": soft_limit_s,
        "task_publish_retry": True,
        "task_publish_retry_policy": {
            "max_retries": 3,
            "interval_start": 0.1,
            "interval_step": 0.5,
            "interval_max": 2,
        },
        "task_queues": tuple(Queue(name, Exchange(name), routing_key=name) for name in QUEUES),
        "task_default_queue": "maintenance",
        "task_routes": {f"opus.{name}.*": {"queue": name} for name in QUEUES},
        "worker_send_task_events": True,
        "task_send_sent_event": True,
        "worker_hijack_root_logger": False,
        "beat_schedule": {
            "sweep-expired-sessions": {
                "task": SWEEP_TASK,
                "schedule": float(settings.cleanup_interval_s),
                "kwargs": {"max_age_s": settings.session_ttl_s},
            },
            "compute-statistics": {
                "task": STATISTICS_TASK,
                "schedule": float(settings.statistics_interval_s),
            },
        },
    }


def _settings_or_exit() -> Settings:
    """The settings; on bad configuration, the one-line error the CLI gives, and exit 2."""
    try:
        return load_settings()
    except ConfigError as exc:
        sys.stderr.write(f"error: {exc}\n")
        raise SystemExit(2) from None


globals().update(build(_settings_or_exit()))
