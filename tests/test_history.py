"""History is append-only: entries merge by id on every write, on both backends alike.

The rule is written twice, in Lua (the Redis scripts) and in Python (the memory backend);
every scenario here runs on both, and a seeded run of random interleavings checks that the
two leave the same history behind.
"""

from __future__ import annotations

import json
import random
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest

from sessions.codec import Snapshot
from sessions.history import covers, elements, history_entry, merge, new_entry_id, timestamp
from sessions.memory_store import MemoryStore
from sessions.redis_ops import Retention
from sessions.redis_sync import SyncRedisStore
from sessions.state import SessionState, SessionStatus
from sessions.storage import ArchiveMark, SaveResult
from tests.helpers import make_state

T0 = datetime(2026, 1, 1, 10, 0, tzinfo=UTC)
SyncStore = SyncRedisStore | MemoryStore


def turn(n: int, text: str | None = None, role: str = "user") -> dict[str, object]:
    """Turn n, n seconds after T0."""
    return history_entry(
        f"turn_{n}",
        timestamp=timestamp(T0 + timedelta(seconds=n)),
        role=role,
        content=text or f"turn {n}",
    )


def text(entries: list[dict[str, object]]) -> str:
    return json.dumps(entries, separators=(",", ":"), ensure_ascii=False)


def with_turns(cid: str, turns: list[dict[str, object]], **fields: object) -> SessionState:
    state = make_state(cid, **fields)
    state.conversation_history = [dict(t) for t in turns]
    return state


@pytest.fixture(params=["memory", "redis"])
def store(request: pytest.FixtureRequest) -> Iterator[SyncStore]:
    """The blocking store of each backend (the one workers and the hand-off write through)."""
    if request.param == "memory":
        yield MemoryStore(max_sessions=1000)
        return
    redis_url, prefix = request.getfixturevalue("redis_url"), request.getfixturevalue("key_prefix")
    sync = SyncRedisStore(redis_url, prefix, Retention())
    yield sync
    sync.close()


def save(store: SyncStore, state: SessionState, **changes: object) -> SaveResult:
    return store.save_many([Snapshot.of(state.model_copy(update=changes, deep=True))])


def stored_history(store: SyncStore, cid: str) -> list[str]:
    record = store.load_record(cid)
    assert record is not None
    return [str(t["id"]) for t in record.state.conversation_history]


# -- the rule, on text ------------------------------------------------------------------------


def test_merge_adds_the_missing_entries_in_time_order_and_only_once() -> None:
    stored = text([turn(1), turn(4)])
    late = text([turn(1), turn(2), turn(3)])
    merged, added = merge(stored, late)
    assert added == 2 and [e["id"] for e in json.loads(merged)] == [
        "turn_1",
        "turn_2",
        "turn_3",
        "turn_4",
    ]
    assert merge(merged, late) == (merged, 0)
    assert merge(merged, None) == (merged, 0)


def test_merge_keeps_entries_byte_for_byte() -> None:
    odd = history_entry(
        "turn_0",
        timestamp=timestamp(T0),
        content='ünïcode "quoted" [x,{y}]',
        result={"empty": [], "nested": {}, "big": 12345678901234567890},
    )
    first, late = text([turn(1)]), text([odd])
    assert merge(first, late) == ("[" + late[1:-1] + "," + first[1:-1] + "]", 1)


def test_covers_is_the_prefix_case_and_splitting_round_trips() -> None:
    short, long = text([turn(1)]), text([turn(1), turn(2)])
    assert covers(long, short) and not covers(short, long) and covers(short, "[]")
    parts = elements(long)
    assert parts is not None and len(parts) == 2 and "[" + ",".join(parts) + "]" == long
    assert elements('[{"t":"a\\"]}"},{"u":1}]') == ['{"t":"a\\"]}"}', '{"u":1}']


@pytest.mark.parametrize("odd", ["[1,2]", '[{"a":1}, {"b":2}]', "{}", '[{"id":"x"'], ids=str)
def test_text_that_does_not_split_back_is_left_as_it_is(odd: str) -> None:
    assert elements(odd) is None
    assert merge(text([turn(1)]), odd) == (text([turn(1)]), 0)
    assert merge(odd, text([turn(1)])) == (odd, 0)


def test_entries_without_an_id_first_are_never_merged() -> None:
    anonymous = text([{"role": "user", "content": "no id", "id": "late-id"}])
    assert merge(text([turn(1)]), anonymous) == (text([turn(1)]), 0)


def test_entry_ids_are_unique_and_timestamps_sort_as_text() -> None:
    assert len({new_entry_id() for _ in range(1000)}) == 1000
    whole_second = timestamp(T0)
    assert whole_second.endswith(".000000+00:00") and whole_second < timestamp(
        T0 + timedelta(microseconds=1)
    )


# -- the rule in the stores -------------------------------------------------------------------


def test_a_late_snapshot_from_an_old_owner_adds_its_turns_and_nothing_else(
    store: SyncStore,
) -> None:
    old = with_turns("c1", [turn(1), turn(2), turn(3)], caller="old owner")
    assert save(store, old, seq=3).applied == 1
    resumed = with_turns("c1", [turn(1)], caller="new owner")
    assert save(store, resumed, epoch=2, seq=1).applied == 1  # the new owner saw one turn
    result = save(store, old, seq=9, caller="late", status=SessionStatus.PAUSED)
    assert (result.applied, result.stale, result.merged) == (0, 1, 0)  # already kept
    record = store.load_record("c1")
    assert record is not None
    assert stored_history(store, "c1") == ["turn_1", "turn_2", "turn_3"]
    state = record.state
    assert (state.caller, state.epoch, state.seq, state.status) == (
        "new owner",
        2,
        1,
        SessionStatus.ACTIVE,
    )


def test_turns_only_the_old_owner_had_are_merged_once(store: SyncStore) -> None:
    assert save(store, with_turns("c1", [turn(1)]), seq=1).applied == 1
    assert save(store, with_turns("c1", [turn(1), turn(5)]), epoch=2, seq=1).applied == 1
    late = with_turns("c1", [turn(1), turn(2), turn(3)])
    first, again = save(store, late, seq=7), save(store, late, seq=7)
    assert (first.merged, again.merged, again.stale) == (1, 0, 1)
    assert stored_history(store, "c1") == ["turn_1", "turn_2", "turn_3", "turn_5"]
    assert store.events()["snapshots_stale_merged"] == 1


def test_an_applied_snapshot_keeps_the_entries_it_lacks(store: SyncStore) -> None:
    save(store, with_turns("c1", [turn(1)]), seq=1)
    save(store, with_turns("c1", [turn(1), turn(6)]), epoch=2, seq=1)
    save(store, with_turns("c1", [turn(1), turn(2)]), seq=5)  # late: merged
    newer = with_turns("c1", [turn(1), turn(6), turn(7)])
    assert save(store, newer, epoch=2, seq=2).applied == 1
    assert stored_history(store, "c1") == ["turn_1", "turn_2", "turn_6", "turn_7"]


def test_late_turns_reopen_an_archived_call_which_is_counted_once(store: SyncStore) -> None:
    save(store, with_turns("c1", [turn(1)]), seq=1)
    ended = with_turns("c1", [turn(1), turn(4)])
    ended.end("caller hung up")
    save(store, ended, epoch=2, seq=5)
    assert store.mark_archived("c1", 10.0, {"usage_input_tokens": 7}) is ArchiveMark.MARKED
    assert store.archive_backlog() == 0
    result = save(store, with_turns("c1", [turn(1), turn(2)]), seq=3)
    assert result.reopened == ("c1",) and result.merged == 1
    record = store.load_record("c1")
    assert record is not None and not record.archived
    assert record.state.status is SessionStatus.ENDED and store.archive_backlog() == 1
    assert store.mark_archived("c1", 10.0, {"usage_input_tokens": 7}) is ArchiveMark.MARKED
    events = store.events()
    assert (events["archived"], events["usage_input_tokens"]) == (1, 7)
    assert stored_history(store, "c1") == ["turn_1", "turn_2", "turn_4"]


def test_the_two_backends_leave_the_same_history_for_random_interleavings(
    redis_url: str, key_prefix: str
) -> None:
    redis_store = SyncRedisStore(redis_url, key_prefix, Retention())
    memory_store = MemoryStore(max_sessions=1000)
    rng = random.Random(1303)
    merged = 0
    try:
        for case in range(40):
            cid = f"r{case}"
            writes = _random_writes(rng, cid)
            for snap in writes:
                outcome = redis_store.save_many([snap])
                assert outcome == memory_store.save_many([snap]), case
                merged += outcome.merged
            redis_record, memory_record = (
                redis_store.load_record(cid),
                memory_store.load_record(cid),
            )
            assert redis_record is not None and memory_record is not None
            assert redis_record.state == memory_record.state, case
        assert merged > 10  # the interleavings did exercise the merge
    finally:
        redis_store.close()


def _random_writes(rng: random.Random, cid: str) -> list[Snapshot]:
    """Snapshots of two owners (epochs 1 and 2) with overlapping turns, in a random order."""
    turns = [turn(n) for n in range(1, 9)]
    writes = []
    for seq in range(1, 7):
        epoch = rng.choice([1, 2])
        picked = sorted(rng.sample(turns, rng.randint(0, 5)), key=lambda t: str(t["timestamp"]))
        state = with_turns(cid, picked)
        if rng.random() < 0.15:
            state.end("done")
        writes.append(Snapshot.of(state.model_copy(update={"epoch": epoch, "seq": seq})))
    rng.shuffle(writes)
    return writes
