"""Redis-only behaviours: atomic claims under concurrency, indexes, TTLs, corrupt data, secrets."""

from __future__ import annotations

import asyncio
import signal
from pathlib import Path

import pytest
import redis

from sessions.clock import to_us
from sessions.codec import Snapshot
from sessions.errors import CorruptSession, SessionLimitReached, StorageUnavailable
from sessions.redis_async import RedisSessionStorage
from sessions.service import SessionManagerService
from tests.helpers import make_state
from tests.services import free_port, throwaway_redis
from tests.topology import start_node


@pytest.fixture
def raw(redis_url: str) -> redis.Redis:
    return redis.Redis.from_url(redis_url, decode_responses=True)


async def test_fifty_concurrent_resumes_count_fifty(redis_storage: RedisSessionStorage) -> None:
    service = SessionManagerService(redis_storage)
    await service.create_session("c1", status="paused")
    results = await asyncio.gather(*(service.resume_session("c1") for _ in range(50)))
    assert all(r is not None for r in results)
    stored = await service.get_session("c1")
    assert stored is not None and (stored.resumed_count, stored.epoch) == (50, 51)
    assert sorted(r.epoch for r in results if r) == list(range(2, 52))


async def test_activity_moves_in_the_state_and_the_index_together(
    redis_storage: RedisSessionStorage, raw: redis.Redis
) -> None:
    await redis_storage.save(Snapshot.of(make_state("c1", idle_s=30)))
    touched = await redis_storage.load("c1", touch=True)
    assert touched is not None
    score = raw.zscore(redis_storage.ops.keys.live_index(), "c1")
    assert score == to_us(touched.last_activity)


async def test_key_ttl_is_a_safety_net_longer_than_the_session_ttl(
    redis_storage: RedisSessionStorage, raw: redis.Redis
) -> None:
    await redis_storage.create(make_state("c1"))
    ttl_ms = raw.pttl(redis_storage.ops.keys.session("c1"))
    assert ttl_ms > redis_storage.default_ttl * 1000
    await redis_storage.end("c1", "done")
    assert raw.pttl(redis_storage.ops.keys.session("c1")) > ttl_ms


async def test_a_corrupt_blob_raises_an_error_naming_the_conversation(
    redis_storage: RedisSessionStorage, raw: redis.Redis
) -> None:
    await redis_storage.save(Snapshot.of(make_state("c1")))
    raw.hset(redis_storage.ops.keys.session("c1"), "conversation_history", "{not json")
    with pytest.raises(CorruptSession, match="'c1'"):
        await redis_storage.load("c1")
    raw.delete(redis_storage.ops.keys.session("c1"))
    raw.set(redis_storage.ops.keys.session("c1"), "a string, not a hash")
    with pytest.raises(CorruptSession, match="'c1'"):
        await redis_storage.load("c1")


async def test_corrupt_entries_do_not_crash_a_list_or_a_sweep(
    redis_storage: RedisSessionStorage, raw: redis.Redis
) -> None:
    keys = redis_storage.ops.keys
    for i in range(5):
        await redis_storage.save(Snapshot.of(make_state(f"c{i}", idle_s=5000)))
    raw.delete(keys.session("c1"))
    raw.set(keys.session("c2"), "garbage")
    raw.hset(keys.session("c3"), "metadata", "][")
    assert sorted(await redis_storage.list_active_sessions()) == [f"c{i}" for i in range(5)]
    result = await redis_storage.expire_batch(3600, 100)
    assert sorted(result.ended) == ["c0", "c3", "c4"] and result.vanished == 2
    assert await redis_storage.list_active_sessions() == []


async def test_the_password_never_appears_in_stats_or_errors(redis_url: str) -> None:
    try:
        server = throwaway_redis("--requirepass", "s3cret-pw")
        url = server.__enter__()
    except FileNotFoundError:
        pytest.skip("needs the redis-server binary to start a server with a password")
    try:
        authed = url.replace("redis://", "redis://:s3cret-pw@")
        storage = RedisSessionStorage(authed, session_prefix="t:")
        stats = await storage.get_stats()
        assert stats["live_sessions"] == 0
        assert "s3cret-pw" not in repr(stats) and stats["redis"].startswith("redis at 127.0.0.1")
        await storage.close()
    finally:
        server.__exit__(None, None, None)
    down = RedisSessionStorage(f"redis://:s3cret-pw@127.0.0.1:{free_port()}/0", pool_timeout_s=1)
    with pytest.raises(StorageUnavailable) as err:
        await down.load("c1")
    assert "s3cret-pw" not in str(err.value)
    await down.close()


async def test_listing_and_sweeping_never_scan_the_keyspace(
    redis_storage: RedisSessionStorage, raw: redis.Redis
) -> None:
    for i in range(20):
        await redis_storage.save(Snapshot.of(make_state(f"c{i}", idle_s=5000 if i < 5 else 0)))
    before = raw.info("commandstats")
    await redis_storage.list_active_sessions()
    await redis_storage.cleanup_expired_sessions(3600)
    await redis_storage.get_stats()
    after = raw.info("commandstats")
    for command in ("cmdstat_keys", "cmdstat_scan"):
        assert after.get(command, {}).get("calls", 0) == before.get(command, {}).get("calls", 0)


async def test_max_sessions_holds_under_concurrent_creates(
    redis_storage: RedisSessionStorage,
) -> None:
    service = SessionManagerService(redis_storage, max_sessions=10)

    async def create(i: int) -> bool:
        try:
            await service.create_session(f"c{i}")
            return True
        except SessionLimitReached:
            return False

    outcomes = await asyncio.gather(*(create(i) for i in range(25)))
    assert sum(outcomes) == 10 and await redis_storage.live_count() == 10


async def test_a_stale_live_index_entry_does_not_stop_a_sweep_early(
    redis_storage: RedisSessionStorage, raw: redis.Redis
) -> None:
    keys = redis_storage.ops.keys
    for i in range(3):
        await redis_storage.save(Snapshot.of(make_state(f"c{i}", idle_s=5000)))
    await redis_storage.end("c0", "done")
    raw.zadd(keys.live_index(), {"c0": 1})  # an index out of step with its session
    result = await redis_storage.expire_batch(3600, 3)
    assert sorted(result.ended) == ["c1", "c2"] and result.vanished == 1


async def test_scripts_are_loaded_again_after_redis_forgets_them() -> None:
    with throwaway_redis() as url:
        storage = RedisSessionStorage(url, session_prefix="t:")
        try:
            await storage.create(make_state("c1"), replace=False, max_live=0)
            await storage.client.script_flush()  # as after a restart
            state = await storage.load("c1", touch=True)
            assert state is not None and state.conversation_id == "c1"
        finally:
            await storage.close()


@pytest.mark.parametrize("touch", [False, True], ids=["read", "script"])
async def test_a_redis_that_stops_answering_is_unavailable_in_time_and_no_reply_crosses(
    tmp_path: Path, touch: bool
) -> None:
    node = start_node(tmp_path, "frozen", free_port(), ["--save", "", "--appendonly", "no"])
    storage = RedisSessionStorage(f"redis://127.0.0.1:{node.port}", session_prefix="t:")
    storage.command_timeout_s = 0.5
    try:
        await storage.save(Snapshot.of(make_state("c1", caller="first")))
        await storage.save(Snapshot.of(make_state("c2", caller="second")))
        node.proc.send_signal(signal.SIGSTOP)  # the server hangs: nothing answers
        try:
            with pytest.raises(StorageUnavailable, match="did not answer within 0.5 s"):
                await storage.load("c1", touch=touch)
        finally:
            node.proc.send_signal(signal.SIGCONT)
        stored = await storage.load("c2", touch=touch)  # c1's late answer never reaches it
        assert stored is not None and stored.caller == "second"
    finally:
        await storage.close()
        node.stop()


async def test_a_script_sent_on_a_connection_the_server_closed_while_idle_goes_through() -> None:
    with throwaway_redis() as url:
        storage = RedisSessionStorage(url, session_prefix="t:")
        killer = redis.Redis.from_url(url)
        try:
            await storage.save(Snapshot.of(make_state("c1")))
            await storage.save(Snapshot.of(make_state("c2")))
            own = killer.client_id()
            for client in killer.client_list():  # as the server's idle `timeout` would
                if int(client["id"]) != own:
                    killer.client_kill_filter(_id=client["id"])
            for cid in ("c1", "c2"):
                state = await storage.load(cid, touch=True)
                assert state is not None and state.conversation_id == cid
        finally:
            await storage.close()
            killer.close()
