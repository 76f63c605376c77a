"""Session storage on a Redis Cluster: one hash slot per script, sessions over every master."""

from __future__ import annotations

from redis.crc import key_slot

from bridges.call.control import ControlListener
from sessions.codec import Snapshot
from sessions.control import RedisCallControl
from sessions.errors import SessionLimitReached
from sessions.redis_async import RedisSessionStorage
from sessions.redis_sync import SyncRedisStore
from sessions.service import SessionManagerService
from tests.helpers import make_state
from tests.topology import ClusterGroup


async def test_sessions_spread_over_every_master(
    cluster_storage: RedisSessionStorage, redis_cluster: ClusterGroup
) -> None:
    for i in range(200):
        assert await cluster_storage.save(Snapshot.of(make_state(f"call-{i}")))
    keys = cluster_storage.ops.keys
    per_master = []
    for node in redis_cluster.nodes:
        client = node.client()
        try:
            found = [k for k in client.scan_iter(match=f"{keys.prefix}*", count=1000)
                     if "}_" not in k]  # fmt: skip
        finally:
            client.close()
        per_master.append(len(found))
    assert sum(per_master) == 200 and min(per_master) > 20
    assert await cluster_storage.live_count() == 200
    assert len(await cluster_storage.list_active_sessions()) == 200


async def test_every_key_of_a_session_is_in_one_hash_slot(
    cluster_storage: RedisSessionStorage,
) -> None:
    keys = cluster_storage.ops.keys
    for cid in ("a", "call-42", "x.y@z"):
        slots = {key_slot(k.encode()) for k in keys.script_keys(cid)}
        assert len(slots) == 1, cid


async def test_the_sweep_and_the_counters_read_every_shard(
    cluster_storage: RedisSessionStorage, redis_cluster: ClusterGroup, key_prefix: str
) -> None:
    for i in range(60):
        idle_s = 7200 if i % 3 == 0 else 0
        await cluster_storage.save(Snapshot.of(make_state(f"call-{i}", idle_s=idle_s)))
    assert await cluster_storage.cleanup_expired_sessions(3600) == 20
    assert await cluster_storage.status_counts() == {"active": 40, "ended": 20}
    sync = SyncRedisStore(session_prefix=key_prefix, topology=cluster_storage.topology)
    try:
        assert sync.archive_backlog() == 20 and sync.live_count() == 40
        assert len(sync.archive_overdue(0, 100)) == 20
        result = sync.save_many([Snapshot.of(make_state(f"new-{i}")) for i in range(30)])
        assert result.applied == 30 and sync.events()["snapshots_applied"] == 30
    finally:
        sync.close()


async def test_a_sharded_store_limits_each_shard_to_its_share(
    cluster_storage: RedisSessionStorage,
) -> None:
    keys = cluster_storage.ops.keys
    same_shard = [f"c{i}" for i in range(400) if keys.shard_of(f"c{i}") == 0][:3]
    limited = SessionManagerService(cluster_storage, max_sessions=2 * keys.shards)
    await limited.create_session(same_shard[0])
    await limited.create_session(same_shard[1])
    try:
        await limited.create_session(same_shard[2])
    except SessionLimitReached:
        refused = True
    else:
        refused = False
    assert refused  # the shard's share (MAX_SESSIONS / REDIS_SHARDS, rounded up) is full


async def test_operators_hang_up_a_live_call_through_the_cluster(
    cluster_storage: RedisSessionStorage,
) -> None:
    hung_up: list[str] = []

    async def hang_up_here(conversation_id: str, reason: str) -> bool:
        hung_up.append(conversation_id)
        return True

    await cluster_storage.start()  # as the bridge runtime does
    keys = cluster_storage.ops.keys
    listener = ControlListener(cluster_storage.client, keys, "bridge-1", hang_up_here)
    await listener.start()
    try:
        requests = RedisCallControl(cluster_storage.client, keys)
        assert await requests.hang_up("bridge-1", "call-7", "operator")
        assert not await requests.hang_up("bridge-2", "call-8", "operator")  # nobody listens
    finally:
        await listener.stop()
    assert hung_up == ["call-7"]
