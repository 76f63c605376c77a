"""SessionManagerService: the specification's API with its fixes, on both backends."""

from __future__ import annotations

import pytest

from sessions.codec import Snapshot
from sessions.errors import InvalidSessionData, InvalidUpdate, SessionExists, SessionLimitReached
from sessions.service import SessionManagerService
from sessions.state import SessionStatus
from sessions.storage import ClaimOutcome
from tests.helpers import make_state


async def test_create_refuses_a_live_id_unless_asked_to_replace(
    service: SessionManagerService,
) -> None:
    first = await service.create_session("c1", caller="+1555", status="active")
    assert (first.epoch, first.caller) == (1, "+1555")
    with pytest.raises(SessionExists, match="replace=True"):
        await service.create_session("c1")
    replaced = await service.create_session("c1", replace=True, caller="+1666")
    assert replaced.epoch == 2
    stored = await service.get_session("c1")
    assert stored is not None and stored.caller == "+1666"


async def test_create_rejects_unknown_fields_and_bad_values(service: SessionManagerService) -> None:
    with pytest.raises(InvalidSessionData, match="colour"):
        await service.create_session("c1", colour="blue")
    with pytest.raises(InvalidSessionData, match="status"):
        await service.create_session("c1", status="sleeping")


async def test_create_stops_at_max_sessions(service: SessionManagerService) -> None:
    keys = getattr(getattr(service.storage, "ops", None), "keys", None)
    if keys is not None and keys.shards > 1:
        pytest.skip("a sharded store limits each shard: see test_cluster.py")
    limited = SessionManagerService(service.storage, max_sessions=2)
    await limited.create_session("c1")
    await limited.create_session("c2")
    with pytest.raises(SessionLimitReached):
        await limited.create_session("c3")


async def test_update_validates_and_coerces_values(service: SessionManagerService) -> None:
    await service.create_session("c1", status="active")
    assert await service.update_session("c1", status="paused", current_turn="3", caller="x")
    stored = await service.get_session("c1")
    assert stored is not None
    assert (stored.status, stored.current_turn, stored.caller) == (SessionStatus.PAUSED, 3, "x")
    with pytest.raises(InvalidUpdate, match="colour"):
        await service.update_session("c1", colour="blue")
    with pytest.raises(InvalidUpdate, match="epoch"):
        await service.update_session("c1", epoch=9)
    with pytest.raises(InvalidUpdate, match="current_turn"):
        await service.update_session("c1", current_turn="three")


async def test_update_reports_false_when_nothing_was_stored(service: SessionManagerService) -> None:
    assert not await service.update_session("missing", caller="x")
    await service.create_session("c1")
    await service.end_session("c1", "done")
    assert not await service.update_session("c1", status="active")
    stored = await service.get_session("c1")
    assert stored is not None and stored.status is SessionStatus.ENDED


async def test_update_to_ended_ends_the_session_with_a_reason(
    service: SessionManagerService,
) -> None:
    await service.create_session("c1", status="active")
    assert await service.update_session("c1", status="ended", end_reason="transferred")
    stored = await service.get_session("c1")
    assert stored is not None and stored.end_reason == "transferred"
    assert await service.list_active_sessions() == []


async def test_resume_claims_once_per_call_and_never_resumes_ended(
    service: SessionManagerService,
) -> None:
    await service.create_session("c1", status="paused")
    resumed = await service.resume_session("c1")
    assert resumed is not None and resumed.status is SessionStatus.ACTIVE
    assert (resumed.resumed_count, resumed.epoch) == (1, 2)
    await service.end_session("c1", "caller hung up")
    assert await service.resume_session("c1") is None
    refused = await service.try_resume("c1")
    assert refused.outcome is ClaimOutcome.ENDED


async def test_expired_sessions_do_not_resume_even_before_the_sweep(
    service: SessionManagerService,
) -> None:
    await service.storage.save(Snapshot.of(make_state("c1", idle_s=4000)))
    assert await service.resume_session("c1", max_age_seconds=3600) is None
    assert (await service.try_resume("c1", 3600)).outcome is ClaimOutcome.EXPIRED


async def test_end_records_reason_and_time(service: SessionManagerService) -> None:
    await service.create_session("c1", status="active")
    assert await service.end_session("c1", "caller hung up")
    assert not await service.end_session("c1", "second end")
    stored = await service.get_session("c1")
    assert stored is not None and stored.end_reason == "caller hung up"
    assert stored.metadata["end_reason"] == "caller hung up"
    assert stored.ended_at is not None and stored.ended_at >= stored.created_at
    raw = await service.storage.retrieve_session("c1")
    assert raw is not None and raw["metadata"]["end_reason"] == "caller hung up"


@pytest.mark.parametrize(
    ("setup", "reason"),
    [
        ("missing", "session not found"),
        ("ended", "session has ended"),
        ("expired", "session expired"),
        ("error", "session is in error"),
        ("ok", "session is valid"),
    ],
)
async def test_validate_session_gives_the_reason(
    service: SessionManagerService, setup: str, reason: str
) -> None:
    if setup != "missing":
        status = SessionStatus.ERROR if setup == "error" else SessionStatus.ACTIVE
        idle_s = 5000 if setup == "expired" else 0
        await service.storage.save(Snapshot.of(make_state("c1", idle_s=idle_s, status=status)))
    if setup == "ended":
        await service.end_session("c1")
    result = await service.validate_session("c1")
    assert result["reason"] == reason
    assert result["valid"] is result["can_resume"] is (setup == "ok")


async def test_validate_does_not_touch_activity(service: SessionManagerService) -> None:
    await service.storage.save(Snapshot.of(make_state("c1", idle_s=5000)))
    await service.validate_session("c1")
    assert await service.cleanup_expired_sessions(3600) == 1


async def test_stats_count_sessions_by_status(service: SessionManagerService) -> None:
    await service.start()
    for i in range(3):
        await service.create_session(f"c{i}", status="active")
    await service.end_session("c0")
    stats = await service.get_session_stats()
    assert stats["active_sessions_count"] == 2
    assert stats["status_counts"] == {"active": 2, "ended": 1}
    assert stats["service_status"] == "running"
    await service.stop()


async def test_delete_and_list(service: SessionManagerService) -> None:
    await service.create_session("c1")
    await service.create_session("c2")
    assert await service.delete_session("c1")
    assert await service.list_active_sessions() == ["c2"]
