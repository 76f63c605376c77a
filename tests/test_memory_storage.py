"""Memory-only rules: copies, capacity eviction, sweep cost, the background sweep."""

from __future__ import annotations

from sessions.activity_index import ActivityIndex
from sessions.codec import Snapshot
from sessions.memory import MemorySessionStorage
from sessions.state import SessionStatus
from tests.conftest import wait_until
from tests.helpers import make_state, snapshot


async def test_eviction_happens_only_when_a_new_id_arrives_at_capacity() -> None:
    storage = MemorySessionStorage(max_sessions=3)
    for i in range(3):
        await storage.save(Snapshot.of(make_state(f"c{i}", idle_s=100 - i)))
    await storage.save(snapshot(make_state("c0", idle_s=0), seq=5, caller="overwrite"))
    assert storage.store.evictions == 0
    assert sorted(await storage.list_active_sessions()) == ["c0", "c1", "c2"]
    await storage.save(Snapshot.of(make_state("c3")))
    assert storage.store.evictions == 1
    assert sorted(await storage.list_active_sessions()) == ["c0", "c2", "c3"]


async def test_eviction_takes_the_least_recently_active_and_touching_counts() -> None:
    storage = MemorySessionStorage(max_sessions=2)
    await storage.save(Snapshot.of(make_state("old", idle_s=50)))
    await storage.save(Snapshot.of(make_state("newer", idle_s=10)))
    await storage.retrieve_session("old", update_activity=True)
    await storage.create(make_state("third"))
    assert sorted(await storage.list_active_sessions()) == ["old", "third"]


async def test_mutating_what_was_stored_does_not_change_the_store() -> None:
    storage = MemorySessionStorage()
    state = make_state("c1", metadata={"a": [1]})
    data = state.to_dict()
    await storage.store_session("c1", data)
    data["metadata"]["a"].append(2)
    state.metadata["a"].append(3)
    stored = await storage.retrieve_session("c1", update_activity=False)
    assert stored is not None and stored["metadata"] == {"a": [1]}


def test_a_sweep_looks_only_at_what_it_removes() -> None:
    index = ActivityIndex()
    calls = 0
    original = index.oldest

    def counting() -> tuple[str, int] | None:
        nonlocal calls
        calls += 1
        return original()

    index.oldest = counting  # type: ignore[method-assign]
    for i in range(10_000):
        index.set(f"live-{i}", 1_000_000 + i)
    for i in range(10):
        index.set(f"old-{i}", 10 + i)  # older than the newest: goes to the late heap
    assert index.pop_older_than(cutoff_us=500, limit=1000) == [f"old-{i}" for i in range(10)]
    assert calls == 11


def test_the_activity_index_orders_in_order_and_late_entries_together() -> None:
    index = ActivityIndex()
    for key, us in [("a", 5), ("b", 9), ("c", 1), ("d", 7), ("b", 3), ("e", 12)]:
        index.set(key, us)
    assert list(index) == ["c", "b", "a", "d", "e"]
    index.remove("a")
    assert index.pop_older_than(8, 10) == ["c", "b", "d"]
    assert list(index) == ["e"] and len(index) == 1


async def test_start_runs_the_background_sweep() -> None:
    storage = MemorySessionStorage(cleanup_interval=0.02, session_ttl_s=60)
    await storage.save(Snapshot.of(make_state("idle", idle_s=120)))
    await storage.save(Snapshot.of(make_state("busy")))
    await storage.start()

    async def idle_ended() -> bool:
        state = await storage.load("idle")
        return state is not None and state.status is SessionStatus.ENDED

    await wait_until(idle_ended)
    assert await storage.list_active_sessions() == ["busy"]
    await storage.close()
