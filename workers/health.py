"""Container health checks: `python -m workers.health worker NAME` or `... beat`.

A worker is healthy when it answers a control ping; beat is healthy when the sweep it
schedules has run within two cleanup intervals (give the container a start period of two
intervals so the first sweep can happen).
"""

from __future__ import annotations

import sys
import time

from sessions.factory import build_sync_store
from sessions.redis_sync import SyncRedisStore
from sessions.settings import load_settings


def worker_alive(name: str) -> bool:
    """True when the named worker answers a ping."""
    from workers.app import app

    return bool(app.control.ping(destination=[name], timeout=5))


def sweep_recent() -> bool:
    """True when the last sweep ran within two cleanup intervals."""
    settings = load_settings()
    if settings.storage_backend != "redis":
        print("beat health needs the Redis backend (set REDIS_URL)", file=sys.stderr)
        return False
    store = build_sync_store(settings)
    assert isinstance(store, SyncRedisStore)
    try:
        last_us = store.events().get("last_sweep_us")
    finally:
        store.close()
    if last_us is None:
        return False
    return time.time() - last_us / 1e6 < 2 * settings.cleanup_interval_s


def main(argv: list[str]) -> int:
    if len(argv) == 2 and argv[0] == "worker":
        return 0 if worker_alive(argv[1]) else 1
    if argv == ["beat"]:
        return 0 if sweep_recent() else 1
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
