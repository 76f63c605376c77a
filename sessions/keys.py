"""Every Redis key the project uses, and the rule for ids that may appear in one."""

from __future__ import annotations

import re
from dataclasses import dataclass

from sessions.errors import InvalidConversationId

DEFAULT_PREFIX = "opusagent:session:"
LOCK_KINDS = frozenset({"sweep", "archive"})

# Starts with a letter or digit, so no id can collide with the `_`-named keys below.
CONVERSATION_ID_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:@+-]{0,127}")


def check_conversation_id(conversation_id: object) -> str:
    """Return the id if it is safe to put in a key; raise InvalidConversationId if not."""
    if not isinstance(conversation_id, str) or not CONVERSATION_ID_PATTERN.fullmatch(
        conversation_id
    ):
        raise InvalidConversationId(
            f"conversation id {str(conversation_id)[:80]!r} must be 1-128 characters of "
            "letters, digits and . _ : @ + -, starting with a letter or digit"
        )
    return conversation_id


@dataclass(frozen=True)
class KeySpace:
    """The key templates under one prefix."""

    prefix: str = DEFAULT_PREFIX

    def session(self, conversation_id: str) -> str:
        """Hash holding one session's fields."""
        return self.prefix + check_conversation_id(conversation_id)

    @property
    def live_index(self) -> str:
        """Sorted set: live (not ended) conversation ids scored by last activity (µs)."""
        return self.prefix + "_idx:live"

    @property
    def archive_index(self) -> str:
        """Sorted set: ended, not yet archived conversation ids scored by end time (µs)."""
        return self.prefix + "_idx:archive"

    @property
    def status_counts(self) -> str:
        """Hash: number of stored sessions in each status."""
        return self.prefix + "_counts"

    @property
    def statistics(self) -> str:
        """String: the last computed statistics document (JSON)."""
        return self.prefix + "_stats"

    def lock(self, name: str) -> str:
        """String: a lock (`sweep`, or `archive:<conversation id>`), holding its owner's token."""
        kind, _, conversation_id = name.partition(":")
        if kind not in LOCK_KINDS or (conversation_id and kind != "archive"):
            raise ValueError(f"unknown lock {name!r}")
        if conversation_id:
            check_conversation_id(conversation_id)
        return self.prefix + "_lock:" + name

    @property
    def events(self) -> str:
        """Hash: monotonic event counters (resumes, archived, archive failures, ...)."""
        return self.prefix + "_events"

    @property
    def durations(self) -> str:
        """List: durations (s) of the most recently archived calls, newest first."""
        return self.prefix + "_durations"

    def control(self, instance_id: str) -> str:
        """Pub/sub channel: requests to the bridge instance `instance_id` (hang up a call)."""
        return self.prefix + "_control:" + check_conversation_id(instance_id)

    def control_reply(self, token: str) -> str:
        """Pub/sub channel: one requester's answers from the bridges."""
        return self.control_reply_prefix + check_conversation_id(token)

    @property
    def control_reply_prefix(self) -> str:
        """What every reply channel starts with (a bridge answers on no other channel)."""
        return self.prefix + "_control_reply:"

    def script_keys(self, conversation_id: str) -> list[str]:
        """The KEYS list of the per-session scripts: session, live, archive, counts, events."""
        return [
            self.session(conversation_id),
            self.live_index,
            self.archive_index,
            self.status_counts,
            self.events,
        ]
