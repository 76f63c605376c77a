"""The storage contract: every behaviour here holds on the memory and the Redis backend."""

from __future__ import annotations

import pytest

from sessions.codec import Snapshot, snapshot_wire
from sessions.state import SessionStatus
from sessions.storage import ArchiveMark, ClaimOutcome, EndOutcome, SessionStorage, UpdateOutcome
from tests.helpers import make_state, snapshot
from tests.test_state import full_state


async def test_a_stored_session_comes_back_with_every_field(storage: SessionStorage) -> None:
    state = full_state()
    assert await storage.save(Snapshot.of(state))
    assert await storage.load("conv-1") == state
    assert await storage.retrieve_session("conv-1", update_activity=False) == state.to_dict()


async def test_an_older_snapshot_never_overwrites_a_newer_one(storage: SessionStorage) -> None:
    state = make_state("c1", caller="newest")
    assert await storage.save(snapshot(state, seq=5))
    assert not await storage.save(snapshot(state, seq=4, caller="older seq"))
    assert not await storage.save(snapshot(state, seq=5, caller="same seq replayed"))
    assert await storage.save(snapshot(state, epoch=2, seq=0, caller="newer epoch"))
    assert not await storage.save(snapshot(state, epoch=1, seq=99, caller="old epoch"))
    stored = await storage.load("c1")
    assert stored is not None and (stored.caller, stored.epoch, stored.seq) == ("newer epoch", 2, 0)


async def test_store_session_applies_the_same_ordering(storage: SessionStorage) -> None:
    state = make_state("c1")
    state.add_conversation_item({"role": "user", "content": "one"})
    assert await storage.store_session("c1", state.to_dict())
    assert not await storage.store_session("c1", state.to_dict())
    state.add_conversation_item({"role": "user", "content": "two"})
    assert await storage.store_session("c1", state.to_dict())
    stored = await storage.retrieve_session("c1")
    assert stored is not None and stored["current_turn"] == 2


async def test_a_later_snapshot_never_un_ends_a_session(storage: SessionStorage) -> None:
    state = make_state("c1")
    await storage.save(snapshot(state, seq=1))
    assert await storage.end("c1", "caller hung up") is EndOutcome.ENDED
    assert not await storage.save(snapshot(state, seq=50, status=SessionStatus.ACTIVE))
    stored = await storage.load("c1")
    assert stored is not None and stored.status is SessionStatus.ENDED
    assert stored.end_reason == "caller hung up" and stored.ended_at is not None
    assert await storage.end("c1", "again") is EndOutcome.ALREADY
    assert await storage.list_active_sessions() == []


async def test_a_claim_fences_the_previous_owner(storage: SessionStorage) -> None:
    state = make_state("c1", resumed_count=0)
    await storage.save(snapshot(state, seq=3))
    claim = await storage.claim("c1", max_age_s=3600)
    assert claim.outcome is ClaimOutcome.OK and claim.state is not None
    assert (claim.state.epoch, claim.state.seq, claim.state.resumed_count) == (2, 0, 1)
    assert not await storage.save(snapshot(state, seq=4, caller="late save from the old owner"))
    assert await storage.save(snapshot(claim.state, seq=1, caller="new owner"))
    stored = await storage.load("c1")
    assert stored is not None and stored.caller == "new owner"


@pytest.mark.parametrize(
    ("setup", "outcome"),
    [
        ("missing", ClaimOutcome.MISSING),
        ("ended", ClaimOutcome.ENDED),
        ("error", ClaimOutcome.ERROR),
        ("expired", ClaimOutcome.EXPIRED),
    ],
)
async def test_a_claim_is_refused_with_a_reason(
    storage: SessionStorage, setup: str, outcome: ClaimOutcome
) -> None:
    if setup != "missing":
        idle_s = 7200 if setup == "expired" else 0
        status = SessionStatus.ERROR if setup == "error" else SessionStatus.ACTIVE
        await storage.save(Snapshot.of(make_state("c1", idle_s=idle_s, status=status)))
        if setup == "ended":
            await storage.end("c1", "done")
    result = await storage.claim("c1", max_age_s=3600)
    assert result.outcome is outcome and result.state is None


async def test_expired_sessions_are_ended_and_leave_the_live_list(storage: SessionStorage) -> None:
    for i in range(30):
        await storage.save(Snapshot.of(make_state(f"old-{i}", idle_s=4000)))
        await storage.save(Snapshot.of(make_state(f"new-{i}", idle_s=10)))
    assert await storage.cleanup_expired_sessions(max_age_seconds=3600) == 30
    live = await storage.list_active_sessions()
    assert sorted(live) == sorted(f"new-{i}" for i in range(30))
    old = await storage.load("old-0")
    assert old is not None and old.status is SessionStatus.ENDED and old.end_reason == "expired"
    assert await storage.cleanup_expired_sessions(max_age_seconds=3600) == 0
    assert (await storage.status_counts()) == {"active": 30, "ended": 30}


async def test_retrieving_with_activity_moves_the_session_out_of_expiry(
    storage: SessionStorage,
) -> None:
    await storage.save(Snapshot.of(make_state("c1", idle_s=100)))
    before = await storage.load("c1")
    touched = await storage.retrieve_session("c1", update_activity=True)
    assert before is not None and touched is not None
    assert touched["last_activity"] > before.last_activity.isoformat()
    assert await storage.cleanup_expired_sessions(max_age_seconds=50) == 0
    assert await storage.list_active_sessions() == ["c1"]


async def test_retrieving_does_not_revive_an_expired_session(storage: SessionStorage) -> None:
    await storage.save(Snapshot.of(make_state("c1", idle_s=7200)))
    assert await storage.update_session_activity("c1")
    assert await storage.cleanup_expired_sessions(max_age_seconds=3600) == 1


async def test_a_retrieved_dict_is_a_copy(storage: SessionStorage) -> None:
    await storage.save(Snapshot.of(make_state("c1", metadata={"a": 1})))
    got = await storage.retrieve_session("c1")
    assert got is not None
    got["metadata"]["a"] = 2
    got["conversation_history"].append({"role": "user"})
    again = await storage.retrieve_session("c1")
    assert again is not None and again["metadata"] == {"a": 1}
    assert again["conversation_history"] == []


async def test_field_updates_advance_seq_and_are_refused_once_ended(
    storage: SessionStorage,
) -> None:
    await storage.save(snapshot(make_state("c1"), seq=3))
    assert await storage.update_fields("c1", {"caller": '"x"'}, "paused") is UpdateOutcome.OK
    stored = await storage.load("c1")
    assert stored is not None and (stored.caller, stored.status, stored.seq) == (
        "x",
        SessionStatus.PAUSED,
        4,
    )
    assert await storage.update_fields("nope", {"caller": '"x"'}) is UpdateOutcome.MISSING
    await storage.end("c1", "done")
    assert await storage.update_fields("c1", {"caller": '"y"'}) is UpdateOutcome.ENDED


async def test_create_refuses_a_live_id_and_replacing_raises_the_epoch(
    storage: SessionStorage,
) -> None:
    state = make_state("c1")
    assert (await storage.create(state)).created
    refused = await storage.create(state)
    assert not refused.created and refused.existing_status == "active"
    replaced = await storage.create(state, replace=True)
    assert replaced.created and replaced.epoch == 2
    assert (await storage.status_counts()) == {"active": 1}


async def test_an_ended_session_is_not_replaced_before_its_archive(
    storage: SessionStorage,
) -> None:
    await storage.create(make_state("c1"))
    await storage.end("c1", "done")
    assert not (await storage.create(make_state("c1"))).created
    assert await storage.mark_archived("c1") is ArchiveMark.MARKED
    assert (await storage.create(make_state("c1"))).created


async def test_delete_removes_the_session_and_its_counts(storage: SessionStorage) -> None:
    await storage.create(make_state("c1"))
    assert await storage.delete_session("c1")
    assert not await storage.delete_session("c1")
    assert await storage.load("c1") is None
    assert await storage.list_active_sessions() == []
    assert await storage.status_counts() == {}


async def test_status_counts_follow_every_transition(storage: SessionStorage) -> None:
    for i in range(4):
        await storage.create(make_state(f"c{i}"))
    await storage.update_fields("c0", {}, "paused")
    await storage.end("c1", "done")
    await storage.claim("c0", 3600)
    await storage.save(snapshot(make_state("c2"), epoch=2, status=SessionStatus.ERROR))
    assert await storage.status_counts() == {"active": 2, "ended": 1, "error": 1}
    stats = await storage.get_stats()
    assert stats["live_sessions"] == 3 and stats["archive_backlog"] == 1


def test_the_hot_path_wire_form_equals_the_snapshot_model() -> None:
    state = make_state("wire-1", caller="+15550100")
    state.add_conversation_item({"role": "user", "content": 'hello "quoted" \u00fcn\u00efcode'})
    state.add_audio_chunk(b"\x00\x01\xff")
    assert snapshot_wire(vars(state)) == Snapshot.of(state).model_dump(mode="json")
