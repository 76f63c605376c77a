"""Where the session store lives: one Redis, a master watched by Sentinel, or a Redis Cluster.

`RedisTopology` holds the addresses and credentials (never shown by `repr` or `describe`)
and builds redis-py's clients: async ones for the bridges and the service, sync ones for
the tasks and the command line. On Sentinel the clients follow the master the sentinels
name (`Sentinel.master_for`): after a failover, a command on a connection to the old
master fails (StorageUnavailable, which the callers retry) and the next one goes to the new
master. On a cluster the client routes each command to the master of its key's hash slot.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal
from urllib.parse import urlsplit

from sessions.keys import KeySpace
from sessions.settings import Settings, parse_addresses

Kind = Literal["single", "sentinel", "cluster"]
SOCKET_TIMEOUT_S = 5.0
# redis-py's cluster clients send a command again after a connection error, by default up
# to 10 times; a script that ran but whose answer was lost would then run twice (a claim
# counted twice, a save reported stale). So the clients never resend: the error reaches the
# caller as StorageUnavailable, and the callers (the workers' task retries, the persister)
# send again where that is safe. Redirections (MOVED, ASK) are followed all the same.
PUBSUB_HEADROOM = 4  # connections beyond the command limit: subscriptions hold one each


@dataclass(frozen=True)
class RedisTopology:
    """How to reach the session store, and its key layout's shard count."""

    kind: Kind = "single"
    url: str = "redis://127.0.0.1:6379"
    sentinels: tuple[tuple[str, int], ...] = ()
    master_name: str = ""
    shards: int = 1
    username: str | None = field(default=None, repr=False)
    password: str | None = field(default=None, repr=False)
    db: int = 0
    sentinel_username: str | None = field(default=None, repr=False)
    sentinel_password: str | None = field(default=None, repr=False)
    extra: dict[str, Any] = field(default_factory=dict, repr=False)

    @classmethod
    def from_settings(cls, settings: Settings) -> RedisTopology:
        """The topology the settings describe (REDIS_SENTINELS, REDIS_CLUSTER, or REDIS_URL)."""
        secret = settings.redis_sentinel_password
        common: dict[str, Any] = {
            "shards": settings.key_shards,
            "username": settings.redis_username,
            "password": settings.redis_kwargs().get("password"),
        }
        if settings.redis_sentinels:
            return cls(
                kind="sentinel",
                sentinels=tuple(parse_addresses(settings.redis_sentinels)),
                master_name=settings.redis_sentinel_master or "",
                db=settings.redis_db or 0,
                sentinel_username=settings.redis_sentinel_username,
                sentinel_password=None if secret is None else secret.get_secret_value(),
                **common,
            )
        kind: Kind = "cluster" if settings.redis_cluster else "single"
        return cls(kind=kind, url=settings.effective_redis_url, **common)

    def keyspace(self, prefix: str) -> KeySpace:
        """The key layout under `prefix` (hash-tagged on a cluster)."""
        return KeySpace(prefix, shards=self.shards, tagged=self.kind == "cluster")

    def describe(self) -> str:
        """Where it is, for logs and errors: no credentials."""
        if self.kind == "sentinel":
            where = ",".join(f"{host}:{port}" for host, port in self.sentinels)
            return f"master {self.master_name!r} of the sentinels {where}"
        parts = urlsplit(self.url)
        where = f"{parts.hostname}:{parts.port or 6379}{parts.path if parts.path != '/' else ''}"
        return f"the Redis Cluster at {where}" if self.kind == "cluster" else f"redis at {where}"

    # -- clients ---------------------------------------------------------------

    def _credentials(self) -> dict[str, Any]:
        out: dict[str, Any] = dict(self.extra)
        if self.username:
            out["username"] = self.username
        if self.password:
            out["password"] = self.password
        return out

    def sentinel_auth(self) -> dict[str, Any]:
        """How to log in to the sentinels themselves."""
        out: dict[str, Any] = {}
        if self.sentinel_username:
            out["username"] = self.sentinel_username
        if self.sentinel_password:
            out["password"] = self.sentinel_password
        return out

    def _sentinel_kwargs(self) -> dict[str, Any]:
        return {"socket_timeout": SOCKET_TIMEOUT_S, "socket_connect_timeout": SOCKET_TIMEOUT_S,
                **self.sentinel_auth()}  # fmt: skip

    def async_client(self, max_connections: int) -> Any:
        """An asyncio client (`redis.asyncio.Redis`, or `RedisCluster` on a cluster).

        Its connections have no socket timeout: the caller bounds each round trip (one
        `asyncio.timeout`, see `RedisSessionStorage`) and how many run at once. The pool has a
        few connections more than that, for pub/sub.
        """
        from redis.asyncio import ConnectionPool, Redis
        from redis.asyncio.cluster import RedisCluster
        from redis.asyncio.retry import Retry
        from redis.asyncio.sentinel import Sentinel
        from redis.backoff import NoBackoff

        options = {"decode_responses": True, "socket_timeout": None,
                   "socket_connect_timeout": SOCKET_TIMEOUT_S, **self._credentials()}  # fmt: skip
        size = max_connections + PUBSUB_HEADROOM
        if self.kind == "cluster":  # the client never resends (see the note at the top)
            return RedisCluster.from_url(self.url, max_connections=size,
                                         retry=Retry(NoBackoff(), 0), **options)  # fmt: skip
        if self.kind == "sentinel":
            watcher = self._sentinel(Sentinel)
            return watcher.master_for(self.master_name, db=self.db, max_connections=size,
                                      **options)  # fmt: skip
        return Redis(connection_pool=ConnectionPool.from_url(self.url, max_connections=size,
                                                             **options))  # fmt: skip

    def sync_client(self, max_connections: int, pool_timeout_s: float) -> Any:
        """A blocking client (`redis.Redis`, or `RedisCluster` on a cluster), waiting up to
        `pool_timeout_s` for a free connection."""
        from redis import BlockingConnectionPool, Redis, RedisCluster
        from redis.backoff import NoBackoff
        from redis.retry import Retry
        from redis.sentinel import Sentinel, SentinelConnectionPool

        class BlockingSentinelPool(SentinelConnectionPool, BlockingConnectionPool):
            """The master's connections, waiting for a free one as the plain pool does."""

        options = {"decode_responses": True, "socket_timeout": SOCKET_TIMEOUT_S,
                   "socket_connect_timeout": SOCKET_TIMEOUT_S, **self._credentials()}  # fmt: skip
        if self.kind == "cluster":
            return RedisCluster.from_url(self.url, max_connections=max_connections,
                                         retry=Retry(NoBackoff(), 0), **options)  # fmt: skip
        if self.kind == "sentinel":
            watcher = self._sentinel(Sentinel)
            master: Any = watcher.master_for
            return master(self.master_name, connection_pool_class=BlockingSentinelPool,
                          db=self.db, max_connections=max_connections, timeout=pool_timeout_s,
                          **options)  # fmt: skip
        pool = BlockingConnectionPool.from_url(
            self.url, max_connections=max_connections, timeout=pool_timeout_s, **options
        )
        return Redis(connection_pool=pool)

    def _sentinel(self, sentinel_class: Any) -> Any:
        """redis-py's `Sentinel` (sync or asyncio) over our sentinels."""
        return sentinel_class(list(self.sentinels), sentinel_kwargs=self._sentinel_kwargs(),
                              socket_timeout=SOCKET_TIMEOUT_S)  # fmt: skip
