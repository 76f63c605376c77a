"""Redis Sentinel: calls go on through a failover, and no call or turn is lost.

A throwaway master, its replica and three sentinels (passwords on both); a bridge and a
Celery worker as subprocesses, both on Sentinel for the session store and the broker. Twenty
calls talk, the master fails over (`SENTINEL FAILOVER`) while they are live, they talk on
and hang up; every call's archived record holds every turn, and no stored session went back
in time: the final stored state of each is at least as new as any state a reader saw during
the run (a write the old master took in its last instant and never replicated may be seen
for a moment, then replaced; see the README on the write-loss window).
"""

from __future__ import annotations

import asyncio
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from bridges.sim.server import RealtimeSimulator
from bridges.sim.telephony import AudioCodesClient
from sessions.codec import Snapshot
from sessions.errors import StorageUnavailable
from sessions.redis_async import RedisSessionStorage
from sessions.redis_sync import SyncRedisStore
from sessions.redis_topology import RedisTopology
from sessions.settings import Settings
from sessions.state import SessionState
from sessions.storage import SaveAck
from tests.conftest import wait_until
from tests.helpers import make_state
from tests.test_handover import archived, bridge, user_turns
from tests.topology import SentinelGroup, binaries_missing, sentinel_group
from tests.workers import broker_app, subprocess_worker

pytestmark = pytest.mark.skipif(
    binaries_missing() is not None,
    reason=f"Sentinel tests start redis-server: {binaries_missing()}",
)
CALLS = 20
BEFORE, AFTER = ("11", "22"), ("33", "44")


@pytest.fixture
def sentinels() -> Iterator[SentinelGroup]:
    with sentinel_group() as group:
        yield group


def sentinel_env(group: SentinelGroup, tmp_path: Path) -> dict[str, str]:
    return {
        "REDIS_SENTINELS": group.sentinel_addresses,
        "REDIS_SENTINEL_MASTER": group.master_name,
        "REDIS_PASSWORD": group.data_password,
        "REDIS_SENTINEL_PASSWORD": group.sentinel_password,
        "SESSION_PREFIX": f"test:{uuid.uuid4().hex[:8]}:",
        "ARCHIVE_DIR": str(tmp_path / "archive"),
        "SAVE_INTERVAL_MS": "20",
        "PYTHONUNBUFFERED": "1",
    }


class Watch:
    """Samples every call's stored (epoch, seq) and turn count until stopped (a thread)."""

    def __init__(self, env: dict[str, str], ids: list[str]) -> None:
        settings = Settings(**{k.lower(): v for k, v in _settings_env(env).items()})
        self.store = SyncRedisStore(session_prefix=env["SESSION_PREFIX"],
                                    topology=RedisTopology.from_settings(settings))  # fmt: skip
        self.ids = ids
        self.samples: dict[str, list[tuple[int, int, int]]] = {cid: [] for cid in ids}
        self.unavailable = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> Watch:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join(timeout=10)
        try:
            self.finals = {cid: self._sample(cid) for cid in self.ids}
        finally:
            self.store.close()

    def _sample(self, cid: str) -> tuple[int, int, int] | None:
        stored = self.store.load_record(cid)
        if stored is None:
            return None
        state = stored.state
        return (state.epoch, state.seq, len(state.conversation_history))

    def _run(self) -> None:
        while not self._stop.wait(0.05):
            for cid in self.ids:
                try:
                    sample = self._sample(cid)
                except StorageUnavailable:
                    self.unavailable += 1
                    continue
                if sample is not None:
                    self.samples[cid].append(sample)


def _settings_env(env: dict[str, str]) -> dict[str, str]:
    names = ("REDIS_SENTINELS", "REDIS_SENTINEL_MASTER", "REDIS_PASSWORD",
             "REDIS_SENTINEL_PASSWORD")  # fmt: skip
    return {name: env[name] for name in names}


@contextmanager
def sentinel_worker(env: dict[str, str], log: Path) -> Iterator[None]:
    settings = Settings(**{k.lower(): v for k, v in _settings_env(env).items()})
    with subprocess_worker(broker_app(settings), env, log, queues="persistence,archive"):
        yield


async def talk(caller: AudioCodesClient, utterances: tuple[str, ...], first_stream: int) -> None:
    for n, digits in enumerate(utterances, start=first_stream):
        await caller.say(digits)
        await caller.expect(
            lambda m, n=n: m.get("type") == "playStream.stop" and m["streamId"] == str(n),
            timeout_s=30,
        )


async def test_twenty_live_calls_lose_no_turn_through_a_failover(
    sentinels: SentinelGroup, tmp_path: Path
) -> None:
    env = sentinel_env(sentinels, tmp_path)
    ids = [f"sentinel-call-{i:02d}" for i in range(CALLS)]
    callers = []
    async with RealtimeSimulator() as sim:
        with sentinel_worker(env, tmp_path / "worker.log"), Watch(env, ids) as watch:
            async with bridge(env, sim.url, tmp_path / "bridge.log") as (url, _):
                for cid in ids:
                    caller = AudioCodesClient(url, cid)
                    await caller.connect()
                    await caller.initiate()
                    callers.append(caller)
                await asyncio.gather(*(c.expect("playStream.stop") for c in callers))
                await asyncio.gather(*(talk(c, BEFORE, 2) for c in callers))
                before = sentinels.master_port()
                started = time.monotonic()
                after = await asyncio.to_thread(sentinels.failover)
                failover_s = time.monotonic() - started
                await asyncio.gather(*(talk(c, AFTER, 2 + len(BEFORE)) for c in callers))
                for caller in callers:
                    await caller.hangup()
                await asyncio.gather(*(c.closed(30) for c in callers))
                await wait_until(lambda: _all_archived(env, ids), timeout_s=90, poll_s=0.2)
    assert after != before and failover_s < 30
    for cid in ids:
        record = archived(env, cid)
        assert record is not None, cid
        assert user_turns(record["transcript"]) == [*BEFORE, *AFTER], cid
        answers = [t["content"] for t in record["transcript"] if t["role"] == "assistant"]
        assert [f"you said {d}" for d in (*BEFORE, *AFTER)] == answers[-4:], cid
        final, samples = watch.finals[cid], watch.samples[cid]
        assert final is not None and samples and final >= max(samples), f"{cid} went back"


async def _all_archived(env: dict[str, str], ids: list[str]) -> bool:
    return all(archived(env, cid) is not None for cid in ids)


def _topology(group: SentinelGroup) -> RedisTopology:
    return RedisTopology(kind="sentinel", sentinels=tuple(("127.0.0.1", s.port) for s in
                         group.sentinels), master_name=group.master_name,
                         password=group.data_password,
                         sentinel_password=group.sentinel_password)  # fmt: skip


async def test_a_hand_off_is_acknowledged_by_the_replica_and_storage_follows_the_master(
    sentinels: SentinelGroup,
) -> None:
    storage = RedisSessionStorage(session_prefix="t:", topology=_topology(sentinels))
    await storage.start()
    try:
        ack = await storage.save_durable(Snapshot.of(make_state("c1")), 1, 2000)
        assert ack == SaveAck(applied=True, replicated=1)
        old = sentinels.master_port()
        new = await asyncio.to_thread(sentinels.failover)
        await wait_until(lambda: _followed(storage))  # the sentinels announced the switch
        await _save_until_it_lands(storage, make_state("c2"))
        assert _stored_on(sentinels, new, "t:c2") and not _stored_on(sentinels, old, "t:c2")
        stored = await storage.load("c1")
        assert stored is not None  # the replica had it: it is the master now
    finally:
        await storage.close()


async def _followed(storage: RedisSessionStorage) -> bool:
    return storage._watch is not None and storage._watch.switches > 0


async def _save_until_it_lands(storage: RedisSessionStorage, state: SessionState) -> None:
    """Save, retrying StorageUnavailable as the workers do."""
    while True:
        try:
            assert await storage.save(Snapshot.of(state))
            return
        except StorageUnavailable:
            await asyncio.sleep(0.05)


def _stored_on(group: SentinelGroup, port: int, key: str) -> bool:
    node = next(n for n in (group.master, group.replica) if n.port == port)
    client = node.client(group.data_password)
    try:
        return bool(client.exists(key))
    finally:
        client.close()
