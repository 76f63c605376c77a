"""SessionState: fields, conversion, older shapes, terminal ENDED, bounded audio."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from sessions.codec import Snapshot, decode_state, encode_state
from sessions.errors import CorruptSession, InvalidConversationId, InvalidSessionData, SessionEnded
from sessions.keys import KeySpace
from sessions.state import SessionState, SessionStatus

SPEC_FIELDS = {
    "conversation_id", "session_id", "bridge_type", "bot_name", "caller", "media_format",
    "status", "created_at", "last_activity", "resumed_count", "conversation_history",
    "current_turn", "function_calls", "audio_buffer", "audio_metadata", "openai_session_id",
    "openai_conversation_id", "active_response_id", "error_count", "last_error", "metadata",
}  # fmt: skip


def full_state() -> SessionState:
    """A state with every field set to something other than its default."""
    t0 = datetime(2026, 1, 2, 3, 4, 5, 678901, tzinfo=UTC)
    return SessionState(
        conversation_id="conv-1",
        session_id="sess-1",
        bridge_type="twilio",
        bot_name="billing-bot",
        caller="+15550100",
        media_format="raw/mulaw",
        status=SessionStatus.PAUSED,
        created_at=t0,
        last_activity=t0 + timedelta(seconds=90),
        resumed_count=2,
        conversation_history=[{"role": "user", "content": "héllo", "n": [1, 2.5, None]}],
        current_turn=1,
        function_calls=[{"name": "lookup", "arguments": {"id": 7}, "result": {"ok": True}}],
        audio_buffer=[b"\x00\xff\x10", b""],
        audio_metadata={"rate_hz": 16000},
        openai_session_id="oai-s",
        openai_conversation_id="oai-c",
        active_response_id="resp-1",
        error_count=3,
        last_error="boom",
        metadata={"k": {"nested": ["v"]}},
        ended_at=None,
        end_reason=None,
        epoch=4,
        seq=17,
    )


def test_the_model_has_every_field_of_the_specification_plus_ordering() -> None:
    assert SPEC_FIELDS | {"epoch", "seq"} <= set(SessionState.model_fields)


def test_every_field_round_trips_through_to_dict_and_from_dict() -> None:
    state = full_state()
    assert SessionState.from_dict(state.to_dict()) == state


def test_every_field_round_trips_through_the_stored_field_map() -> None:
    state = full_state()
    assert decode_state("conv-1", encode_state(state)) == state
    assert decode_state("conv-1", Snapshot.of(state).fields) == state


def test_a_long_history_decodes_exactly_as_the_model_validates_it() -> None:
    state = full_state()
    for i in range(50):
        state.add_conversation_item({"role": "user", "content": f"turn {i} ünïcode", "n": i})
    state.conversation_history.append({"nested": {"list": [1.5, None, True]}, "big": 2**70})
    decoded = decode_state("conv-1", encode_state(state))
    assert decoded == state
    assert decoded.model_fields_set == SessionState.model_validate(state.to_dict()).model_fields_set
    assert decoded.to_dict() == state.to_dict()


@pytest.mark.parametrize(
    "history",
    ['[{"role": "user"}, ' * 10 + "oops",
     '{"an object": "where a list of items should be, long enough to be parsed apart"}',
     '[{"role": "user", "content": "fine"}, "a string where an item should be", 3]'],
    ids=["invalid JSON", "an object", "items that are not objects"],
)  # fmt: skip
def test_a_corrupt_long_history_is_a_corrupt_session_naming_the_conversation(
    history: str,
) -> None:
    fields = encode_state(full_state()) | {"conversation_history": history}
    with pytest.raises(CorruptSession, match="'conv-1'.*conversation_history"):
        decode_state("conv-1", fields)


def test_to_dict_is_json_safe_with_base64_audio_and_utc_times() -> None:
    data = full_state().to_dict()
    assert data["audio_buffer"] == ["AP8Q", ""]
    assert data["created_at"].endswith("Z")
    assert data["status"] == "paused"


def test_timestamps_are_timezone_aware_utc() -> None:
    state = SessionState(conversation_id="c")
    assert state.created_at.tzinfo is not None and state.last_activity.utcoffset() == timedelta(0)
    other_zone = datetime(2026, 1, 1, 12, tzinfo=datetime.now().astimezone().tzinfo)
    assert SessionState(conversation_id="c", created_at=other_zone).created_at.tzinfo == UTC


def test_from_dict_accepts_the_older_shape_with_naive_times_and_hex_audio() -> None:
    older = {
        "conversation_id": "legacy-1",
        "status": "active",
        "created_at": "2025-06-01T10:00:00",
        "last_activity": "2025-06-01T10:05:00.250000",
        "audio_buffer": ["00ff10"],
        "metadata": {"end_reason": "caller hung up"},
    }
    state = SessionState.from_dict(older)
    assert state.created_at == datetime(2025, 6, 1, 10, tzinfo=UTC)
    assert state.audio_buffer == [b"\x00\xff\x10"]
    assert state.end_reason == "caller hung up"


@pytest.mark.parametrize(
    ("data", "field"),
    [
        ({"conversation_id": "c", "resumed_count": "many"}, "resumed_count"),
        ({"conversation_id": "c", "status": "sleeping"}, "status"),
        ({"conversation_id": "c", "created_at": "yesterday"}, "created_at"),
        ({"conversation_id": "c", "schema_version": 2, "audio_buffer": ["%%"]}, "audio_buffer"),
        ({"conversation_id": "c", "audio_buffer": ["xyz"]}, "audio_buffer"),
        ({"caller": "x"}, "conversation_id"),
        ({"conversation_id": "c", "current_turn": -1}, "current_turn"),
    ],
)
def test_invalid_data_raises_an_error_naming_the_field(data: dict[str, object], field: str) -> None:
    with pytest.raises(InvalidSessionData, match=field):
        SessionState.from_dict(data)


@pytest.mark.parametrize("bad", ["", "a b", "x" * 129, "../etc", "*", "_idx:live", "a\nb"])
def test_conversation_ids_outside_the_safe_pattern_are_refused(bad: str) -> None:
    with pytest.raises(InvalidConversationId):
        KeySpace().session(bad)
    with pytest.raises(InvalidSessionData, match="conversation_id"):
        SessionState.from_dict({"conversation_id": bad})


def test_mutators_advance_seq_and_activity() -> None:
    state = SessionState(conversation_id="c", last_activity=datetime(2020, 1, 1, tzinfo=UTC))
    state.add_conversation_item({"role": "user", "content": "hi"})
    state.add_function_call({"name": "f"})
    assert (state.seq, state.current_turn, len(state.function_calls)) == (2, 1, 1)
    assert state.last_activity.year > 2020


def test_ended_is_terminal_no_method_moves_it_back_to_active() -> None:
    state = SessionState(conversation_id="c", status=SessionStatus.ACTIVE)
    state.end("caller hung up")
    with pytest.raises(SessionEnded):
        state.increment_resume_count()
    with pytest.raises(SessionEnded):
        state.set_status("active")
    state.set_error("late error")
    state.end("again")
    assert state.status is SessionStatus.ENDED
    assert state.end_reason == "caller hung up" and state.ended_at is not None
    assert not state.can_resume()


def test_can_resume_and_is_expired_follow_status_and_idle_time() -> None:
    idle = SessionState(
        conversation_id="c",
        status=SessionStatus.PAUSED,
        last_activity=datetime.now(UTC) - timedelta(seconds=120),
    )
    assert idle.can_resume() and idle.can_resume(max_age_seconds=300)
    assert idle.is_expired(60) and not idle.can_resume(max_age_seconds=60)
    idle.set_error("x")
    assert not idle.can_resume()


def test_the_audio_buffer_is_bounded_dropping_the_oldest_chunks() -> None:
    state = SessionState(conversation_id="c")
    for i in range(100):
        state.add_audio_chunk(bytes([i]) * 10_000)
    assert sum(len(c) for c in state.audio_buffer) <= SessionState.audio_buffer_max_bytes
    assert state.audio_buffer[-1][0] == 99
    oversized = SessionState(conversation_id="c", audio_buffer=[b"\x00" * 200_000] * 3)
    assert sum(len(c) for c in oversized.audio_buffer) <= SessionState.audio_buffer_max_bytes


def test_a_naive_datetime_assigned_to_the_state_is_taken_as_utc() -> None:
    state = SessionState(conversation_id="c", status=SessionStatus.PAUSED)
    state.last_activity = datetime.now(UTC).replace(tzinfo=None) - timedelta(hours=2)
    state.created_at = datetime(2026, 1, 2, 3, 4, 5)
    assert state.last_activity.tzinfo is UTC and state.created_at.tzinfo is UTC
    assert state.is_expired(3600) and not state.can_resume(max_age_seconds=3600)
    state.last_activity = datetime.now(UTC).replace(tzinfo=None)
    assert not state.is_expired(3600) and state.can_resume(max_age_seconds=3600)
    assert SessionState.from_dict(state.to_dict()) == state


def test_a_status_assigned_as_text_becomes_a_status_and_nonsense_is_refused() -> None:
    state = SessionState(conversation_id="c")
    state.status = "paused"  # type: ignore[assignment]
    assert state.status is SessionStatus.PAUSED and state.can_resume()
    with pytest.raises(InvalidSessionData, match="status"):
        state.status = "asleep"  # type: ignore[assignment]


def test_the_end_reason_is_in_the_metadata_as_well() -> None:
    state = SessionState(conversation_id="c", metadata={"team": "billing"})
    state.end("caller hung up")
    assert state.metadata == {"team": "billing", "end_reason": "caller hung up"}
    stored = SessionState.from_dict({**state.to_dict(), "metadata": {}})
    assert stored.metadata["end_reason"] == "caller hung up"  # ended by a script, read back
