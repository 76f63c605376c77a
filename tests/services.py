"""Finding the real services the tests need: Redis (found or started) and PostgreSQL."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager

import redis

NO_REDIS_HELP = (
    "no Redis for the tests: REDIS_URL={url} does not answer and there is no redis-server "
    "binary to start a throwaway one.\n"
    "Start one with `docker compose up -d redis` (then REDIS_URL=redis://127.0.0.1:6379), "
    "or install redis-server (apt-get install redis-server / brew install redis)."
)


def free_port() -> int:
    """A TCP port on loopback that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def redis_answers(url: str) -> bool:
    """True when a Redis server answers PING at `url`."""
    try:
        client = redis.Redis.from_url(url, socket_connect_timeout=1, socket_timeout=2)
        try:
            return bool(client.ping())
        finally:
            client.close()
    except redis.RedisError:
        return False


@contextmanager
def throwaway_redis(*extra_args: str, port: int | None = None) -> Iterator[str]:
    """Start a private redis-server (on `port`, or a free one); yield its URL; stop it after."""
    binary = shutil.which("redis-server")
    if binary is None:
        raise FileNotFoundError("redis-server")
    port = port or free_port()
    workdir = tempfile.mkdtemp(prefix="opus-sessions-redis-")
    args = [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
    proc = subprocess.Popen(
        [*args, "--dir", workdir, *extra_args], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    url = f"redis://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 10
        while not _port_open(port):
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"throwaway redis-server on port {port} did not start")
            time.sleep(0.02)
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=10)
        shutil.rmtree(workdir, ignore_errors=True)


def _port_open(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.2)
        return sock.connect_ex(("127.0.0.1", port)) == 0


@contextmanager
def redis_for_tests() -> Iterator[str]:
    """REDIS_URL (default redis://127.0.0.1:6379) if it answers, else a throwaway server."""
    url = os.environ.get("REDIS_URL") or "redis://127.0.0.1:6379"
    if redis_answers(url):
        yield url
        return
    if shutil.which("redis-server") is None:
        raise RuntimeError(NO_REDIS_HELP.format(url=url))
    with throwaway_redis() as started:
        yield started


def delete_prefix(url: str, prefix: str) -> int:
    """Delete every key under a test prefix (tests only; never FLUSHALL a shared server)."""
    client = redis.Redis.from_url(url)
    try:
        keys = list(client.scan_iter(match=prefix + "*", count=1000))
        for start in range(0, len(keys), 1000):
            client.delete(*keys[start : start + 1000])
        return len(keys)
    finally:
        client.close()


DEFAULT_ARCHIVE_TEST_URL = "postgresql://postgres@127.0.0.1:5432/test"
NO_POSTGRES_HELP = (
    "no PostgreSQL for the archive tests at {url}: start one with "
    "`docker compose up -d postgres` (then ARCHIVE_TEST_URL=postgresql://opus:opus@127.0.0.1:5432/"
    "opus) or set ARCHIVE_TEST_URL to a database the tests may create tables in."
)


def archive_test_url() -> str:
    """The PostgreSQL the archive tests write to."""
    return os.environ.get("ARCHIVE_TEST_URL") or DEFAULT_ARCHIVE_TEST_URL


def postgres_answers(url: str) -> bool:
    """True when PostgreSQL accepts a connection at `url`."""
    import psycopg

    try:
        with psycopg.connect(url, connect_timeout=3) as conn:
            conn.execute("SELECT 1")
        return True
    except psycopg.Error:
        return False


def drop_table(url: str, table: str) -> None:
    """Drop a test table."""
    import psycopg

    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(f"DROP TABLE IF EXISTS {table}")
